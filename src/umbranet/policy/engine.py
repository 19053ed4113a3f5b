"""The compiled policy: indexed rules that answer "may X do Y?" with a verdict and its reason.

Decision order (the same in `decide`, `explain` and the views):

1. Only rules for the requested action whose ``src`` includes the subject and whose ``dst``
   includes the service count. A rule's ports for the service are the union of the ports of
   its matching ``dst`` entries.
2. Deny rules first (Istio's order), in document order. A deny rule *applies* unless one of
   its postures fails (a missing report does not lift a deny). For a given port, the first
   applying deny covering it refuses. Without a port, only a deny covering every port refuses;
   narrower denies remove their ports from what the allows may grant.
3. Allow rules, in document order. An allow rule applies only when all its postures hold.
   For a given port, the first applying allow covering it admits. Without a port, the first
   applying allow with some port left after the denies admits (so ``decide(port=None)``
   allows exactly when some port would be allowed).
4. Otherwise: default deny. The reason names the first allow rule that came close (right
   subject, service and action) and why it did not apply (ports, posture).

Verdict reasons name the rule as ``rules[3] (line 42)`` with a one-line text form, so the
person refused can find it in the document.

Scale: rules are indexed by action and by each side's selectors (identity name, group, tag,
``*``; service name, attribute, ``*``), so a decision touches only the rules that mention
the subject *and* the service, not all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from umbranet.policy.errors import require_aware
from umbranet.policy.http import HttpFragment, HttpGrant, HttpSource
from umbranet.policy.index import CRule, DstIndex, SrcIndex
from umbranet.policy.inventory import Inventory
from umbranet.policy.model import (
    ACTIONS,
    NO_PORTS,
    Action,
    HttpRule,
    Policy,
    PortSet,
    Rule,
    ServiceRef,
    SrcSelector,
    Subject,
    normalize_tag,
)
from umbranet.policy.peers import PeerIndex
from umbranet.policy.posture import PostureEvaluator, PostureReport
from umbranet.policy.verdict import Verdict

if TYPE_CHECKING:
    from umbranet.policy.checks import TestFailure
    from umbranet.policy.explain import Explanation
    from umbranet.policy.views import View

__all__ = ["CompiledPolicy", "ResolvedGroup"]

_EMPTY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ResolvedGroup:
    """A group with nested groups expanded: the identity names and tags it covers."""

    names: frozenset[str]
    tags: frozenset[str]


class CompiledPolicy:
    """A validated policy, indexed for decisions; build it with `compile_policy`.

    Immutable as far as callers can tell (it caches fragments and peer sets internally).
    """

    def __init__(
        self,
        policy: Policy,
        groups: Mapping[str, ResolvedGroup],
        text: str,
        known: Inventory,
    ) -> None:
        self.policy = policy
        self.text = text
        self.digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        self.known = known
        self.groups: Mapping[str, ResolvedGroup] = groups
        self._groups_by_name: dict[str, set[str]] = {}
        self._groups_by_tag: dict[str, set[str]] = {}
        for group, resolved in groups.items():
            for name in resolved.names:
                self._groups_by_name.setdefault(name, set()).add(group)
            for tag in resolved.tags:
                self._groups_by_tag.setdefault(tag, set()).add(group)
        # The indexes below are read by `views`, `peers` and `explain` in this package; they
        # are not part of the public API.
        self.crules = tuple(CRule(rule) for rule in policy.rules)
        # A rule's verdict text never changes: build it once, not once per decision.
        self._verdicts = tuple(
            deny_verdict(rule) if rule.deny else allow_verdict(rule) for rule in policy.rules
        )
        self.src_index = {action: SrcIndex() for action in ACTIONS}
        self.dst_index = {action: DstIndex() for action in ACTIONS}
        for position, crule in enumerate(self.crules):
            self.src_index[crule.rule.action].add(position, crule.rule.src)
            self.dst_index[crule.rule.action].add(position, crule.rule.dst)
        self.http_index = DstIndex()
        for position, http_rule in enumerate(policy.http):
            self.http_index.add(position, http_rule.dst)
        self._fragments: dict[ServiceRef, HttpFragment] = {}
        self._peer_index: PeerIndex | None = None

    # -- subjects ------------------------------------------------------------------------------

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.policy.rules

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.policy.warnings

    def groups_of(self, subject: Subject) -> frozenset[str]:
        """Every group (nested ones included) that covers the subject's name or a tag."""
        found = set(self._groups_by_name.get(subject.name, _EMPTY))
        for tag in subject.tags:
            found.update(self._groups_by_tag.get(tag, _EMPTY))
        return frozenset(found)

    def may_assign_tag(self, admin: Subject, tag: str) -> Verdict:
        """May ``admin`` give identities ``tag``? Only its owners in ``tagOwners`` may."""
        bare = normalize_tag(tag)
        owners = self.policy.tag_owners.get(bare)
        if owners is None:
            return Verdict.deny(f"tag:{bare} is not declared in tagOwners")
        groups = self.groups_of(admin)
        for owner in owners:
            if selector_matches(owner, admin, groups):
                return Verdict.allow(f"tagOwners lets {owner.text} assign tag:{bare}")
        listed = ", ".join(o.text for o in owners) or "nobody"
        return Verdict.deny(f"{admin.name} may not assign tag:{bare} (owners: {listed})")

    # -- connection decisions ------------------------------------------------------------------

    def decide(
        self,
        subject: Subject,
        service: ServiceRef,
        action: str,
        port: int | None = None,
        *,
        posture: PostureReport | None = None,
        now: datetime | None = None,
    ) -> Verdict:
        """May ``subject`` ``action`` (dial or bind) ``service`` (on ``port``, if given)?

        ``posture`` is what is known about the subject's endpoint and ``now`` the time (both
        only matter to rules that require a posture; without them such rules cannot allow).
        """
        early = check_request(action, port)
        if early is not None:
            return early
        now = require_aware(now)
        act: Action = "dial" if action == "dial" else "bind"
        groups = self.groups_of(subject)
        found = self.src_index[act].collect(subject, groups) & self.dst_index[act].collect(service)
        evaluator = PostureEvaluator(self.policy.postures, posture, now)
        candidates = sorted(found)
        denied = NO_PORTS
        denials: list[Rule] = []
        for position in candidates:
            crule = self.crules[position]
            if not crule.rule.deny:
                continue
            if crule.rule.postures and evaluator.check(crule.rule.postures)[0] is False:
                continue
            ports = crule.ports_for(service)
            if (port in ports) if port is not None else ports.is_all:
                return self._verdicts[position]
            denied = denied | ports
            denials.append(crule.rule)
        near: tuple[Rule, str] | None = None
        for position in candidates:
            crule = self.crules[position]
            if crule.rule.deny:
                continue
            ports = crule.ports_for(service)
            outcome, posture_text = (
                evaluator.check(crule.rule.postures) if crule.rule.postures else (True, "")
            )
            if outcome is True and (port in ports if port is not None else bool(ports - denied)):
                return self._verdicts[position]
            if near is None:
                why = miss_why(
                    ports,
                    port,
                    outcome=outcome,
                    posture_text=posture_text,
                    denied=denied,
                    denials=denials,
                )
                near = (crule.rule, why)
        return default_verdict(subject, service, act, port, near)

    def explain(
        self,
        subject: Subject,
        service: ServiceRef,
        action: str,
        port: int | None = None,
        *,
        posture: PostureReport | None = None,
        now: datetime | None = None,
    ) -> Explanation:
        """Every rule that mentions the subject or the service, and what it did; the final
        verdict always equals `decide`'s (it is computed by an independent linear scan)."""
        from umbranet.policy.explain import explain_access

        return explain_access(self, subject, service, action, port, posture=posture, now=now)

    # -- http decisions ------------------------------------------------------------------------

    def http_fragment(self, service: ServiceRef) -> HttpFragment:
        """The http rules about ``service``, flattened for its hosting endpoint."""
        fragment = self._fragments.get(service)
        if fragment is None:
            grants = [
                self._grant(self.policy.http[i]) for i in sorted(self.http_index.collect(service))
            ]
            fragment = HttpFragment(service.name, tuple(grants))
            if len(self._fragments) > 65536:
                self._fragments.clear()
            self._fragments[service] = fragment
        return fragment

    def decide_http(self, subject: Subject, service: ServiceRef, method: str, path: str) -> Verdict:
        """May ``subject`` send ``method path`` to the HTTP service ``service``?"""
        return self.http_fragment(service).decide(subject, method, path)

    def explain_http(
        self, subject: Subject, service: ServiceRef, method: str, path: str
    ) -> Explanation:
        from umbranet.policy.explain import explain_http

        return explain_http(self, subject, service, method, path)

    # -- views and tests -----------------------------------------------------------------------

    def view(
        self,
        subject: Subject,
        inventory: Inventory | None = None,
        *,
        posture: PostureReport | None = None,
        now: datetime | None = None,
    ) -> View:
        """What ``subject`` may see: its services (actions, ports), the peers whose keys it
        needs, and the http rules of the services it hosts. Defaults to the compile inventory.
        """
        from umbranet.policy.views import compute_view

        return compute_view(
            self,
            subject,
            inventory if inventory is not None else self.known,
            posture=posture,
            now=now,
        )

    def run_tests(self, inventory: Inventory | None = None) -> list[TestFailure]:
        """Run the document's ``tests``; an empty list means they all pass."""
        from umbranet.policy.checks import run_policy_tests

        return run_policy_tests(self, inventory if inventory is not None else self.known)

    # -- internals shared with views/explain ---------------------------------------------------

    def _grant(self, rule: HttpRule) -> HttpGrant:
        everyone, names, tags = self.flatten(rule.src)
        return HttpGrant(
            rule.label, rule.text, rule.deny, HttpSource(everyone, names, tags), rule.methods,
            rule.paths,
        )  # fmt: skip

    def flatten(
        self, selectors: Iterable[SrcSelector]
    ) -> tuple[bool, frozenset[str], frozenset[str]]:
        """(everyone, names, tags) covered by source selectors, groups expanded."""
        everyone = False
        names: set[str] = set()
        tags: set[str] = set()
        for selector in selectors:
            if selector.kind == "all":
                everyone = True
            elif selector.kind == "name":
                names.add(selector.value)
            elif selector.kind == "tag":
                tags.add(selector.value)
            else:
                resolved = self.groups[selector.value]
                names.update(resolved.names)
                tags.update(resolved.tags)
        return everyone, frozenset(names), frozenset(tags)

    def peers(self, inventory: Inventory) -> PeerIndex:
        """Caches of who holds what in ``inventory``; rebuilt when the inventory changes."""
        index = self._peer_index
        if index is None or not index.serves(inventory):
            index = PeerIndex(self, inventory)
            self._peer_index = index
        return index

    def holders(self, service: str, action: Action, inventory: Inventory) -> frozenset[str]:
        """Identities that may ``action`` ``service`` on some port, whatever their posture
        (e.g. the hosts to tell when a dialer's access changes); see `PeerIndex.holders`."""
        return self.peers(inventory).holders(service, action)

    def members(self, selectors: tuple[SrcSelector, ...], inventory: Inventory) -> frozenset[str]:
        """The identities of ``inventory`` that ``selectors`` cover."""
        return self.peers(inventory).members(selectors)


# -- verdict texts (shared with explain, so both give the same words) -------------------------


def check_request(action: str, port: int | None) -> Verdict | None:
    """Refuse requests that no rule could match (unknown action, impossible port)."""
    if action not in ACTIONS:
        return Verdict.deny(f"unknown action {action!r} (expected dial or bind)")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        return Verdict.deny("port must be a number")
    if port is not None and not 1 <= port <= 65535:
        return Verdict.deny(f"port {port} is out of range 1-65535")
    return None


def allow_verdict(rule: Rule) -> Verdict:
    return Verdict.allow(f"allowed by {rule.label}: {rule.text}")


def deny_verdict(rule: Rule) -> Verdict:
    return Verdict.deny(f"denied by {rule.label}: {rule.text}")


def miss_why(
    ports: PortSet,
    port: int | None,
    *,
    outcome: bool | None,
    posture_text: str,
    denied: PortSet,
    denials: list[Rule],
) -> str:
    """Why an allow rule with the right subject, service and action did not allow."""
    if port is not None and port not in ports:
        return f"covers ports {ports} only"
    if outcome is not True:
        return f"requires posture, but {posture_text}"
    labels = ", ".join(r.label for r in denials) or "deny rules"
    return f"covers ports {ports}, all denied by {labels}"


def default_verdict(
    subject: Subject,
    service: ServiceRef,
    action: Action,
    port: int | None,
    near: tuple[Rule, str] | None,
) -> Verdict:
    on = f" port {port}" if port is not None else ""
    reason = f"no rule allows {subject.name} to {action} {service.name}{on} (default deny)"
    if near is not None:
        reason += f"; nearest: {near[0].label} {near[1]}"
    return Verdict.deny(reason)


def selector_matches(selector: SrcSelector, subject: Subject, groups: frozenset[str]) -> bool:
    if selector.kind == "all":
        return True
    if selector.kind == "name":
        return selector.value == subject.name
    if selector.kind == "group":
        return selector.value in groups
    return selector.value in subject.tags
