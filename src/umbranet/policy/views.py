"""Filtered views: what one identity may know about the network, and nothing more.

An identity's `View` lists the services it may dial or bind (with the ports), the peers whose
keys it needs (the hosts of what it may dial, the dialers of what it may host) and the http
rules of the services it hosts. The controller sends exactly this to the endpoint; anything
outside it (other services, other identities' keys, the rest of the policy) never leaves.

Consistency with `decide`: for the subject's own rules the view applies the same decision
order with the same posture report and time, so ``p in view.services[s].ports[a]`` exactly
when ``decide(subject, s, a, p)`` allows. Peers are computed without the *peers'* postures
(they change; tickets check them): a peer is listed when some rule could let it connect.

`affected_identities` tells which views a policy change can alter, so the controller
recomputes and pushes only those instead of all 100,000.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from umbranet.policy.errors import require_aware
from umbranet.policy.http import HttpFragment
from umbranet.policy.inventory import Inventory
from umbranet.policy.model import Action, DstSelector, PortSet, Rule, Subject
from umbranet.policy.peers import OTHER_ACTION, NameSet, resolve_union
from umbranet.policy.posture import PostureEvaluator, PostureReport

if TYPE_CHECKING:
    from umbranet.policy.engine import CompiledPolicy

__all__ = ["ServiceAccess", "View", "affected_identities", "compute_view"]


class ServiceAccess(NamedTuple):
    """What a subject may do with one service: the ports per allowed action."""

    ports: Mapping[Action, PortSet]

    @property
    def actions(self) -> frozenset[Action]:
        return frozenset(self.ports)


@dataclass(frozen=True, slots=True)
class View:
    """One identity's slice of the network, as policy allows it."""

    subject: str
    services: Mapping[str, ServiceAccess]
    peers: frozenset[str]
    http: Mapping[str, HttpFragment]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (sorted, so equal views serialize equally)."""
        return {
            "subject": self.subject,
            "services": [
                {
                    "name": name,
                    "actions": sorted(access.actions),
                    "ports": {a: str(p) for a, p in sorted(access.ports.items())},
                }
                for name, access in sorted(self.services.items())
            ],
            "peers": sorted(self.peers),
            "http": {name: frag.to_json() for name, frag in sorted(self.http.items())},
        }


def compute_view(
    policy: CompiledPolicy,
    subject: Subject,
    inventory: Inventory,
    *,
    posture: PostureReport | None = None,
    now: datetime | None = None,
) -> View:
    """Build ``subject``'s view from the rules that name it (see the module docstring)."""
    now = require_aware(now)
    peer_index = policy.peers(inventory)
    groups = policy.groups_of(subject)
    evaluator = PostureEvaluator(policy.policy.postures, posture, now)
    positions: set[int] = set()
    for index in policy.src_index.values():
        positions.update(index.collect(subject, groups))
    granted: dict[tuple[str, Action], PortSet] = {}
    applied: list[int] = []
    denies: list[Rule] = []
    for position in sorted(positions):
        rule = policy.crules[position].rule
        if rule.deny:
            if not (rule.postures and evaluator.check(rule.postures)[0] is False):
                denies.append(rule)
            continue
        if rule.postures and evaluator.check(rule.postures)[0] is not True:
            continue
        applied.append(position)
        for key, ports in peer_index.expansion(position):
            old = granted.get(key)
            granted[key] = ports if old is None else old | ports
    emptied = False
    for rule in denies:
        for selector in rule.dst:
            for key in _granted_matching(selector, rule.action, granted, inventory):
                left = granted[key] - selector.ports
                granted[key] = left
                emptied = emptied or not left
    services: dict[str, dict[Action, PortSet]] = {}
    for (service, action), ports in granted.items():
        if ports:
            by_action = services.get(service)
            if by_action is None:
                services[service] = {action: ports}
            else:
                by_action[action] = ports
    sets: list[NameSet] = []
    if emptied:  # a deny took a whole service away: collect its counterparts one by one
        for service, by_action in services.items():
            for action in by_action:
                sets.append(peer_index.holder_set(service, OTHER_ACTION[action]))
    else:  # every applied rule still contributes all its services: use its cached peers
        for position in applied:
            sets.extend(peer_index.rule_peers(position))
    peers = resolve_union(sets, inventory.identity_names()) - {subject.name}
    http: dict[str, HttpFragment] = {}
    if policy.policy.http:
        for service, by_action in services.items():
            ref = inventory.service(service) if "bind" in by_action else None
            fragment = policy.http_fragment(ref) if ref is not None else None
            if fragment is not None and fragment.grants:
                http[service] = fragment
    return View(
        subject.name,
        {name: ServiceAccess(ports) for name, ports in services.items()},
        peers,
        http,
    )


def affected_identities(
    old: CompiledPolicy, new: CompiledPolicy, inventory: Inventory
) -> frozenset[str]:
    """Identities whose view may differ between ``old`` and ``new`` (a superset, never less).

    A rule counts as changed when it was added or removed (reordering does not count), or when
    a group or posture it names changed. A changed rule affects the identities its ``src``
    covers, and the counterparts on the services its ``dst`` covers (their peer lists change):
    the hosts of a dial rule's services, the dialers of a bind rule's. A service whose http
    fragment changed (even by a reordering, which renames its rules) affects its hosts.
    """
    groups = {
        name
        for name in set(old.groups) | set(new.groups)
        if old.groups.get(name) != new.groups.get(name)
    }
    postures = {
        name
        for name in set(old.policy.postures) | set(new.policy.postures)
        if old.policy.postures.get(name) != new.policy.postures.get(name)
    }
    affected: set[str] = set()
    for policy, rule in _changed(old, new, old.policy.rules, new.policy.rules, _rule_key):
        affected.update(policy.members(rule.src, inventory))
        for service in _expand_all(rule.dst, inventory):
            for side in (old, new):
                affected.update(side.holders(service, OTHER_ACTION[rule.action], inventory))
    for policy, rule in _touched(old, new, groups, postures):
        affected.update(policy.members(rule.src, inventory))
        for service in _expand_all(rule.dst, inventory):
            for side in (old, new):
                affected.update(side.holders(service, OTHER_ACTION[rule.action], inventory))
    # Hosts receive the http rules of their services: compare what each would be sent
    # (labels included, so a reordering reaches them too).
    http_services: set[str] = set()
    for side in (old, new):
        for http_rule in side.policy.http:
            http_services.update(_expand_all(http_rule.dst, inventory))
    for service in http_services:
        ref = inventory.service(service)
        if ref is not None and old.http_fragment(ref) != new.http_fragment(ref):
            for side in (old, new):
                affected.update(side.holders(service, "bind", inventory))
    return frozenset(affected)


# -- helpers -----------------------------------------------------------------------------------


def _expand(selector: DstSelector, inventory: Inventory) -> Iterable[str]:
    if selector.kind == "svc":
        return (selector.value,) if inventory.service(selector.value) is not None else ()
    if selector.kind == "attr":
        return inventory.services_with(selector.value)
    return inventory.service_names()


def _expand_all(selectors: Iterable[DstSelector], inventory: Inventory) -> set[str]:
    found: set[str] = set()
    for selector in selectors:
        found.update(_expand(selector, inventory))
    return found


def _granted_matching(
    selector: DstSelector,
    action: Action,
    granted: dict[tuple[str, Action], PortSet],
    inventory: Inventory,
) -> list[tuple[str, Action]]:
    """Keys of ``granted`` for ``action`` whose service ``selector`` covers."""
    if selector.kind == "svc":
        key = (selector.value, action)
        return [key] if key in granted else []
    keys = [key for key in granted if key[1] == action]
    if selector.kind == "all":
        return keys
    out: list[tuple[str, Action]] = []
    for key in keys:
        ref = inventory.service(key[0])
        if ref is not None and selector.value in ref.attributes:
            out.append(key)
    return out


def _rule_key(rule: Rule) -> tuple[Any, ...]:
    return (
        rule.action,
        rule.deny,
        tuple(sorted(s.text for s in rule.src)),
        tuple(sorted(d.text for d in rule.dst)),
        tuple(sorted(rule.postures)),
    )


def _changed(
    old: CompiledPolicy,
    new: CompiledPolicy,
    old_items: Iterable[Any],
    new_items: Iterable[Any],
    key: Any,
) -> list[tuple[CompiledPolicy, Any]]:
    """Items present in one version and not the other (as multisets, ignoring order)."""
    old_list, new_list = list(old_items), list(new_items)
    before, after = Counter(key(i) for i in old_list), Counter(key(i) for i in new_list)
    gone, added = before - after, after - before
    out: list[tuple[CompiledPolicy, Any]] = []
    for policy, items, extra in ((old, old_list, gone), (new, new_list, added)):
        for item in items:
            k = key(item)
            if extra[k] > 0:
                extra[k] -= 1
                out.append((policy, item))
    return out


def _touched(
    old: CompiledPolicy, new: CompiledPolicy, groups: set[str], postures: set[str]
) -> list[tuple[CompiledPolicy, Rule]]:
    """Rules (of either version) naming a group or posture whose definition changed."""
    out: list[tuple[CompiledPolicy, Rule]] = []
    if not groups and not postures:
        return out
    for policy in (old, new):
        for rule in policy.policy.rules:
            names_group = any(s.kind == "group" and s.value in groups for s in rule.src)
            if names_group or not postures.isdisjoint(rule.postures):
                out.append((policy, rule))
    return out
