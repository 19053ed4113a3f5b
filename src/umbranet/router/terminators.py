"""Which endpoints host which service at this router (terminators), and picking one.

A binding lives as long as its link and its bind ticket: the endpoint renews it with a fresh
ticket before expiry; an expired binding is skipped and dropped when next seen.

Picking, in order (the rules of this file):
1. Only live bindings count: not expired, not excluded by the caller (hosts this dial
   already tried), and healthy. A binding is unhealthy for `FAIL_HOLD` seconds after a
   dial through it failed (the host refused or reset before accepting); its link's
   keepalive already removes a silent host's bindings altogether. When every binding is
   unhealthy the unhealthy ones are used anyway: a maybe is better than a refusal.
2. Precedence: only the bindings with the lowest `precedence` number compete (0 primary,
   1 standby, ...); a standby takes dials only while no primary is live and healthy.
3. A dial that opens a stream inside an end-to-end session it already has with one host
   process (`proto/sessions.py`) names that host (`host`, its identity) and, from hosts
   that bind with one, the process (`instance`, the host instance id it sent on BIND and
   in its ACCEPT). With an instance, the dial goes to a live binding of that identity and
   instance, or to none (`pick_instance`): under every strategy and precedence, since it
   continues a session and is no new choice of host (any other process would refuse the
   open). Health does not matter there either: no other process can take it. Without an
   instance (an older host or dialer), ``sticky`` sends it to a binding of that identity
   if one is among the best precedence; the other strategies spread it like any dial.
4. The service's strategy picks among them:
   - ``smart`` (the default): the least loaded for its weight (live circuits through its
     link divided by `weight`, a weight of 0 only when nothing else is left), then fewest
     recent failures; ties rotate.
   - ``weighted``: at random in proportion to each binding's `weight`.
   - ``random``: uniformly at random.
   - ``sticky``: the binding this dialer got last time while it lives, else ``smart``.
   - ``precedence``: always the earliest-bound binding of the best precedence (a strict
     primary/standby pair, no spreading).
Randomness is injected (`rng`), so tests and the simulator replay the same choices.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass, field

__all__ = ["FAIL_HOLD", "STRATEGIES", "Binding", "TerminatorTable"]

FAIL_HOLD = 30
"""Seconds a binding whose dial failed is passed over while another is healthy."""
STRATEGIES = frozenset({"smart", "weighted", "random", "sticky", "precedence"})
MAX_STICKY = 10_000
"""Dialers remembered per router for ``sticky`` (oldest forgotten first)."""


@dataclass(slots=True)
class Binding:
    """One endpoint hosting one service through one link."""

    link: Hashable
    binding_id: int
    service: str
    identity: str
    expires_at: int  # unix seconds, from the bind ticket
    weight: int = 1  # for ``weighted``
    precedence: int = 0  # 0 primary; higher numbers stand by
    failed_until: int = 0  # unix seconds; unhealthy before then
    failures: int = 0  # failed dials since the last success
    instance: str = ""  # the host process (BIND `instance`); "" from hosts that send none


def _load_of_link(binding: Binding) -> int:
    routes = getattr(binding.link, "routes", None)
    return len(routes) if routes is not None else 0


@dataclass(slots=True)
class TerminatorTable:
    """Service name -> bindings, picked by each service's strategy (see the module rules)."""

    rng: random.Random = field(default_factory=random.Random)
    load: Callable[[Binding], int] = _load_of_link
    counters: Counter[str] = field(default_factory=Counter)
    _by_service: dict[str, list[Binding]] = field(default_factory=dict)
    _turn: dict[str, int] = field(default_factory=dict)
    _strategies: dict[str, str] = field(default_factory=dict)
    # (service, dialer) -> (id of the link, binding id): ids, so no dead link is kept alive.
    _sticky: OrderedDict[tuple[str, str], tuple[int, int]] = field(default_factory=OrderedDict)

    def add(self, binding: Binding) -> None:
        """Add or renew (same link and binding id) a binding; a renewal keeps its health."""
        entries = self._by_service.setdefault(binding.service, [])
        for index, existing in enumerate(entries):
            if existing.link is binding.link and existing.binding_id == binding.binding_id:
                binding.failed_until, binding.failures = existing.failed_until, existing.failures
                entries[index] = binding
                return
        entries.append(binding)

    def remove(self, link: Hashable, binding_id: int) -> Binding | None:
        """Drop one binding; returns it if it existed."""
        for service, entries in self._by_service.items():
            for index, existing in enumerate(entries):
                if existing.link is link and existing.binding_id == binding_id:
                    del entries[index]
                    if not entries:
                        del self._by_service[service]
                    return existing
        return None

    def remove_link(self, link: Hashable) -> int:
        """Drop every binding made through `link`; returns how many."""
        dropped = 0
        for service in list(self._by_service):
            kept = [b for b in self._by_service[service] if b.link is not link]
            dropped += len(self._by_service[service]) - len(kept)
            if kept:
                self._by_service[service] = kept
            else:
                del self._by_service[service]
        return dropped

    def set_strategies(self, strategies: dict[str, str]) -> None:
        """The configured strategy per service (from the controller); unknown names and
        services not named fall back to ``smart``."""
        self._strategies = {s: name for s, name in strategies.items() if name in STRATEGIES}

    def strategy(self, service: str) -> str:
        return self._strategies.get(service, "smart")

    def pick(
        self,
        service: str,
        now: int,
        *,
        dialer: str = "",
        exclude: Collection[tuple[Hashable, int]] = (),
        host: str = "",
    ) -> Binding | None:
        """A live binding for `service` by its strategy; expired ones are dropped.
        `exclude` holds (link, binding id) pairs this dial already tried; `host` is the
        identity an in-session open is for (rule 3)."""
        entries = self._by_service.get(service)
        if not entries:
            return None
        if len(entries) == 1 and not exclude and self.strategy(service) == "smart":
            # One host and the default strategy (most services, every dial): what the
            # general path returns for it, counted alike, without building its lists.
            only = entries[0]
            if only.expires_at <= now:
                del self._by_service[service]
                return None
            self._turn[service] = self._turn.get(service, 0) + 1
            self.counters["picked_smart"] += 1
            return only
        live = [b for b in entries if b.expires_at > now]
        if len(live) != len(entries):
            if live:
                self._by_service[service] = live
            else:
                del self._by_service[service]
                return None
        if exclude:
            tried = _ids(exclude)
            live = [b for b in live if (id(b.link), b.binding_id) not in tried]
        healthy = [b for b in live if b.failed_until <= now] or live
        if not healthy:
            return None
        best = min(b.precedence for b in healthy)
        group = [b for b in healthy if b.precedence == best]
        strategy = self.strategy(service)
        held = [b for b in group if b.identity == host] if host and strategy == "sticky" else []
        if held:
            self.counters["picked_session_host"] += 1
            return held[0]
        if strategy == "sticky" and dialer:
            chosen = self._sticky_pick(service, dialer, group)
        elif strategy == "weighted":
            chosen = self.rng.choices(group, weights=[max(b.weight, 0) + 1e-9 for b in group])[0]
        elif strategy == "random":
            chosen = self.rng.choice(group)
        elif strategy == "precedence":
            chosen = group[0]
        else:
            chosen = self._smart(service, group)
        self.counters[f"picked_{strategy}"] += 1
        return chosen

    def pick_instance(
        self,
        service: str,
        now: int,
        host: str,
        instance: str,
        exclude: Collection[tuple[Hashable, int]] = (),
    ) -> Binding | None:
        """The live binding of `service` by host process `instance` of identity `host` (rule
        3), not one in `exclude`; None when that process is not bound here. An instance is a
        routing hint, not a credential: the identity must match too, and the session's keys
        prove the host. Several bindings of one process (one per link) hold the same
        sessions, so a healthy one goes first and any will do."""
        found: Binding | None = None
        tried = _ids(exclude) if exclude else set()
        for binding in self._by_service.get(service, ()):
            if (
                binding.instance != instance
                or binding.identity != host
                or binding.expires_at <= now
                or (id(binding.link), binding.binding_id) in tried
            ):
                continue
            if binding.failed_until <= now:
                found = binding
                break
            found = found or binding
        if found is not None:
            self.counters["picked_session_host"] += 1
        return found

    def failed(self, binding: Binding, now: int) -> None:
        """A dial through `binding` failed before the host accepted: pass it over a while."""
        binding.failures += 1
        binding.failed_until = now + FAIL_HOLD
        self.counters["terminator_failed"] += 1

    def succeeded(self, binding: Binding) -> None:
        binding.failures = 0
        binding.failed_until = 0

    def find(self, link: Hashable, binding_id: int) -> Binding | None:
        for entries in self._by_service.values():
            for binding in entries:
                if binding.link is link and binding.binding_id == binding_id:
                    return binding
        return None

    def all(self) -> list[Binding]:
        """Every binding, live or not yet noticed as expired."""
        return [b for entries in self._by_service.values() for b in entries]

    def standby_ranks(self) -> dict[str, int]:
        """Services whose best binding here is a standby -> that rank (what the router
        reports, so the controller routes its dials to a primary elsewhere first)."""
        best: dict[str, int] = {}
        for service, entries in self._by_service.items():
            rank = min((b.precedence for b in entries), default=0)
            if rank > 0:
                best[service] = rank
        return best

    def serves(self, service: str) -> bool:
        """Whether any binding (live or not yet noticed as expired) is for `service`."""
        return bool(self._by_service.get(service))

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._by_service.values())

    # -- strategies ---------------------------------------------------------------------

    def _smart(self, service: str, group: list[Binding]) -> Binding:
        turn = self._turn.get(service, 0)
        self._turn[service] = turn + 1
        # Rotate first so that equal candidates take turns, then take the least loaded.
        rotated = group[turn % len(group) :] + group[: turn % len(group)]
        return min(
            rotated, key=lambda b: (b.weight <= 0, self.load(b) / max(b.weight, 1), b.failures)
        )

    def _sticky_pick(self, service: str, dialer: str, group: list[Binding]) -> Binding:
        key = (service, dialer)
        held = self._sticky.get(key)
        if held is not None:
            for binding in group:
                if (id(binding.link), binding.binding_id) == held:
                    self._sticky.move_to_end(key)
                    return binding
        chosen = self._smart(service, group)
        self._sticky[key] = (id(chosen.link), chosen.binding_id)
        self._sticky.move_to_end(key)
        while len(self._sticky) > MAX_STICKY:
            self._sticky.popitem(last=False)
        return chosen


def _ids(exclude: Collection[tuple[Hashable, int]]) -> set[tuple[int, int]]:
    return {(id(link), binding_id) for link, binding_id in exclude}
