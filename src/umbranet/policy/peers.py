"""Who holds what: the peer sets behind filtered views, cached per policy and inventory.

A view lists the peers whose keys an identity needs: the hosts (binders) of the services it
may dial and the dialers of the services it may bind. Computing "who may dial billing" means
expanding every rule about billing through groups and tags into identity names, which is
worth doing once per service, not once per view. `PeerIndex` keeps those answers for one
compiled policy and one inventory version; `CompiledPolicy.peers` builds a new one when
either changes, so a cached answer is never stale.

Memory decides the representation. At 100,000 identities a widely dialed service has tens of
thousands of dialers, and copying them per service (and again per host rule) costs
gigabytes. So a `NameSet` is a union of *shared* sets (one frozenset per source selector, as
the inventory expands it) minus the few names deny rules remove; it is resolved into a plain
frozenset only when a view needs it.

Peer sets ignore the *peers'* postures (they change all the time, and tickets check them):
allow rules count whatever posture they need, posture-gated deny rules do not subtract.
Otherwise they are exact.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from umbranet.policy.index import CRule
from umbranet.policy.inventory import Inventory
from umbranet.policy.model import NO_PORTS, Action, PortSet, ServiceRef, SrcSelector, Subject

if TYPE_CHECKING:
    from umbranet.policy.engine import CompiledPolicy

__all__ = ["OTHER_ACTION", "NameSet", "PeerIndex", "resolve_union"]

OTHER_ACTION: dict[Action, Action] = {"dial": "bind", "bind": "dial"}
"""The counterpart's action: who binds what I dial, who dials what I bind."""


@dataclass(frozen=True, slots=True)
class NameSet:
    """(everyone, or the union of ``parts``) minus ``removed``; parts are shared, not copied."""

    parts: tuple[frozenset[str], ...] = ()
    removed: frozenset[str] = frozenset()
    everyone: bool = False

    def resolve(self, everyone: frozenset[str]) -> frozenset[str]:
        return resolve_union((self,), everyone)


def resolve_union(sets: Iterable[NameSet], everyone: frozenset[str]) -> frozenset[str]:
    """The plain union of name sets (``everyone`` is the inventory's set of all names)."""
    found: set[str] = set()
    for item in sets:
        if item.everyone:
            if not item.removed:
                return everyone
            found.update(everyone.difference(item.removed))
        elif item.removed:  # (P1 | P2) - R == (P1 - R) | (P2 - R)
            for part in item.parts:
                found.update(part.difference(item.removed))
        else:
            for part in item.parts:
                found.update(part)
        if len(found) == len(everyone):
            return everyone
    return frozenset(found)


class PeerIndex:
    """Lazily filled caches for one (policy, inventory version) pair."""

    def __init__(self, policy: CompiledPolicy, inventory: Inventory) -> None:
        self.policy = policy
        self.inventory = inventory
        self._owner = weakref.ref(inventory)
        self._version = inventory.version
        self._holders: dict[tuple[str, Action], NameSet] = {}
        self._selector_members: dict[str, frozenset[str]] = {}
        self._expansions: dict[int, tuple[tuple[tuple[str, Action], PortSet], ...]] = {}
        self._rule_peers: dict[int, tuple[NameSet, ...]] = {}

    def serves(self, inventory: Inventory) -> bool:
        """Is this index still valid for ``inventory`` (same object, no change since)?"""
        return self._owner() is inventory and self._version == inventory.version

    def expansion(self, position: int) -> tuple[tuple[tuple[str, Action], PortSet], ...]:
        """The (service, action) pairs rule ``position`` names in the inventory, with ports."""
        found = self._expansions.get(position)
        if found is None:
            rule = self.policy.crules[position].rule
            ports: dict[str, PortSet] = {}
            for selector in rule.dst:
                if selector.kind == "svc":
                    names: Iterable[str] = (
                        (selector.value,) if self.inventory.service(selector.value) else ()
                    )
                elif selector.kind == "attr":
                    names = self.inventory.services_with(selector.value)
                else:
                    names = self.inventory.service_names()
                for name in names:
                    ports[name] = ports.get(name, NO_PORTS) | selector.ports
            found = tuple(((name, rule.action), p) for name, p in ports.items())
            self._expansions[position] = found
        return found

    def members(self, selectors: tuple[SrcSelector, ...]) -> frozenset[str]:
        """The inventory's identities covered by ``selectors``."""
        if any(s.kind == "all" for s in selectors):
            return self.inventory.identity_names()
        return resolve_union((NameSet(self._parts(selectors)),), self.inventory.identity_names())

    def rule_peers(self, position: int) -> tuple[NameSet, ...]:
        """The counterparts on every service rule ``position`` names (see `holder_set`).

        A dial rule's counterparts are the few hosts of its services: resolved and kept. A
        bind rule's are its services' dialers, possibly most of the network: kept as the
        services' own name sets, never copied.
        """
        found = self._rule_peers.get(position)
        if found is None:
            sets = tuple(
                self.holder_set(service, OTHER_ACTION[action])
                for (service, action), _ in self.expansion(position)
            )
            if self.policy.crules[position].rule.action == "dial":
                resolved = resolve_union(sets, self.inventory.identity_names())
                sets = (NameSet((resolved,)),)
            found = sets
            self._rule_peers[position] = found
        return found

    def holders(self, service: str, action: Action) -> frozenset[str]:
        """Identities that may ``action`` ``service`` (see `holder_set`), as a plain set."""
        return self.holder_set(service, action).resolve(self.inventory.identity_names())

    def holder_set(self, service: str, action: Action) -> NameSet:
        """Identities that may ``action`` ``service`` on some port, whatever their posture.

        An upper bound over posture (peers' postures change; tickets check them), exact
        otherwise: deny rules without postures are subtracted per identity.
        """
        key = (service, action)
        cached = self._holders.get(key)
        if cached is not None:
            return cached
        ref = self.inventory.service(service)
        result = NameSet()
        if ref is not None:
            rules = [
                self.policy.crules[p] for p in sorted(self.policy.dst_index[action].collect(ref))
            ]
            allows = [crule for crule in rules if not crule.rule.deny]
            denies = [crule for crule in rules if crule.rule.deny and not crule.rule.postures]
            everyone = any(crule.src_all for crule in allows)
            parts = () if everyone else self._parts(s for c in allows for s in c.rule.src)
            removed = self._removed(ref, allows, denies, everyone, parts)
            if allows:
                result = NameSet(parts, removed, everyone)
        self._holders[key] = result
        return result

    # -- internals -----------------------------------------------------------------------------

    def _parts(self, selectors: Iterable[SrcSelector]) -> tuple[frozenset[str], ...]:
        """One shared frozenset per distinct (non-``*``) selector."""
        parts: dict[str, frozenset[str]] = {}
        for selector in selectors:
            key = selector.text
            if key in parts or selector.kind == "all":
                continue
            cached = self._selector_members.get(key)
            if cached is None:
                _, names, tags = self.policy.flatten((selector,))
                chosen = {n for n in names if self.inventory.identity(n) is not None}
                for tag in tags:
                    chosen.update(self.inventory.identities_with(tag))
                cached = frozenset(chosen)
                self._selector_members[key] = cached
            parts[key] = cached
        return tuple(p for p in parts.values() if p)

    def _removed(
        self,
        service: ServiceRef,
        allows: list[CRule],
        denies: list[CRule],
        everyone: bool,
        parts: tuple[frozenset[str], ...],
    ) -> frozenset[str]:
        """Names the allows cover but the denies leave no port to."""
        if not denies or not allows:
            return frozenset()
        allowed = NO_PORTS
        for crule in allows:
            allowed = allowed | crule.ports_for(service)
        for crule in denies:
            if crule.src_all and not (allowed - crule.ports_for(service)):
                # Everyone is denied every port any allow grants: remove them all.
                return self.inventory.identity_names()
        removed: set[str] = set()
        for crule in denies:
            for name in self.members(crule.rule.src):
                if name in removed or not (everyone or any(name in p for p in parts)):
                    continue
                if not self._grants_some_port(name, service, allows, denies):
                    removed.add(name)
        return frozenset(removed)

    def _grants_some_port(
        self, name: str, service: ServiceRef, allows: list[CRule], denies: list[CRule]
    ) -> bool:
        subject = self.inventory.identity(name) or Subject(name)
        groups = self.policy.groups_of(subject)
        granted = NO_PORTS
        for crule in allows:
            if crule.src_matches(subject, groups):
                granted = granted | crule.ports_for(service)
        for crule in denies:
            if crule.src_matches(subject, groups):
                granted = granted - crule.ports_for(service)
        return bool(granted)
