"""Rule indexes: which rules name a subject, which name a service, found without a scan.

`CompiledPolicy` keeps, per action, a `SrcIndex` (rule positions by identity name, group,
tag, and the ``*`` rules) and a `DstIndex` (by service name, attribute, and ``*``). A
decision intersects the two lookups, so its cost follows the number of rules that mention
the subject and the service, not the size of the policy. `CRule` pre-splits a rule's sources
for the per-identity checks the peer computation makes.
"""

from __future__ import annotations

from collections.abc import Iterable

from umbranet.policy.model import (
    ALL_PORTS,
    NO_PORTS,
    DstSelector,
    PortSet,
    Rule,
    ServiceRef,
    SrcSelector,
    Subject,
)

__all__ = ["CRule", "DstIndex", "SrcIndex"]


class CRule:
    """A rule with its selectors pre-split for fast matching."""

    __slots__ = ("all_ports", "rule", "src_all", "src_groups", "src_names", "src_tags")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.src_all = any(s.kind == "all" for s in rule.src)
        self.src_names = frozenset(s.value for s in rule.src if s.kind == "name")
        self.src_groups = frozenset(s.value for s in rule.src if s.kind == "group")
        self.src_tags = frozenset(s.value for s in rule.src if s.kind == "tag")
        self.all_ports = len(rule.dst) == 1 and rule.dst[0].ports.is_all

    def src_matches(self, subject: Subject, groups: frozenset[str]) -> bool:
        return (
            self.src_all
            or subject.name in self.src_names
            or not self.src_groups.isdisjoint(groups)
            or not self.src_tags.isdisjoint(subject.tags)
        )

    def ports_for(self, service: ServiceRef) -> PortSet:
        if self.all_ports:
            return ALL_PORTS
        ports = NO_PORTS
        for selector in self.rule.dst:
            if selector.matches(service):
                ports = ports | selector.ports
        return ports


class SrcIndex:
    """Rule positions by the subjects they name."""

    def __init__(self) -> None:
        self.by_name: dict[str, list[int]] = {}
        self.by_group: dict[str, list[int]] = {}
        self.by_tag: dict[str, list[int]] = {}
        self.everyone: list[int] = []

    def add(self, position: int, selectors: tuple[SrcSelector, ...]) -> None:
        for selector in selectors:
            if selector.kind == "all":
                self.everyone.append(position)
            else:
                table = {"name": self.by_name, "group": self.by_group, "tag": self.by_tag}
                table[selector.kind].setdefault(selector.value, []).append(position)

    def collect(self, subject: Subject, groups: Iterable[str]) -> set[int]:
        found = set(self.everyone)
        found.update(self.by_name.get(subject.name, ()))
        for group in groups:
            found.update(self.by_group.get(group, ()))
        for tag in subject.tags:
            found.update(self.by_tag.get(tag, ()))
        return found


class DstIndex:
    """Rule positions by the services they name."""

    def __init__(self) -> None:
        self.by_service: dict[str, list[int]] = {}
        self.by_attribute: dict[str, list[int]] = {}
        self.everything: list[int] = []

    def add(self, position: int, selectors: tuple[DstSelector, ...]) -> None:
        for selector in selectors:
            if selector.kind == "all":
                self.everything.append(position)
            elif selector.kind == "svc":
                self.by_service.setdefault(selector.value, []).append(position)
            else:
                self.by_attribute.setdefault(selector.value, []).append(position)

    def collect(self, service: ServiceRef) -> set[int]:
        found = set(self.everything)
        found.update(self.by_service.get(service.name, ()))
        for attribute in service.attributes:
            found.update(self.by_attribute.get(attribute, ()))
        return found
