"""Which endpoints host which service at this router (terminators), and picking one.

A binding lives as long as its link and its bind ticket: the endpoint renews it with a fresh
ticket before expiry; an expired binding is skipped and dropped when next seen.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(slots=True)
class Binding:
    """One endpoint hosting one service through one link."""

    link: Hashable
    binding_id: int
    service: str
    identity: str
    expires_at: int  # unix seconds, from the bind ticket


@dataclass(slots=True)
class TerminatorTable:
    """Service name -> bindings, with round-robin choice among the live ones."""

    _by_service: dict[str, list[Binding]] = field(default_factory=dict)
    _turn: dict[str, int] = field(default_factory=dict)

    def add(self, binding: Binding) -> None:
        """Add or renew (same link and binding id) a binding."""
        entries = self._by_service.setdefault(binding.service, [])
        for index, existing in enumerate(entries):
            if existing.link is binding.link and existing.binding_id == binding.binding_id:
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

    def pick(self, service: str, now: int) -> Binding | None:
        """A live binding for `service`, rotating among them; expired ones are dropped."""
        entries = self._by_service.get(service)
        if not entries:
            return None
        live = [b for b in entries if b.expires_at > now]
        if len(live) != len(entries):
            if live:
                self._by_service[service] = live
            else:
                del self._by_service[service]
                return None
        turn = self._turn.get(service, 0)
        self._turn[service] = turn + 1
        return live[turn % len(live)]

    def all(self) -> list[Binding]:
        """Every binding, live or not yet noticed as expired."""
        return [b for entries in self._by_service.values() for b in entries]

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._by_service.values())
