"""HTTP rules for one service, in a form the hosting endpoint can evaluate on its own.

The controller decides who may *dial* a service; for HTTP services the hosting endpoint also
checks each request (method and path) against the policy's ``http`` rules, because only it
sees the request line. It must not receive the whole policy (nothing else about the network
may leak to it), so the controller sends an `HttpFragment`: the http rules whose ``dst``
names this service, with every group flattened into identity names and tags (the endpoint
knows the dialer's name and tags from its ticket, not the policy's groups).

Semantics, as in Istio's authorization policies:

- no http rule names the service: every request passes (the dial rules decide alone);
- otherwise deny rules come first (the first match refuses), then allow rules (the first
  match admits), and anything else is refused (default deny);
- methods compare case-insensitively; paths are normalized (`pathnorm`) and prefixes match
  whole segments.

`CompiledPolicy.decide_http` uses the same fragment, so the controller and the endpoint can
never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from umbranet.policy.errors import PolicyError
from umbranet.policy.model import Subject
from umbranet.policy.pathnorm import normalize_path, path_has_prefix
from umbranet.policy.verdict import Verdict

__all__ = ["HttpFragment", "HttpGrant", "HttpSource", "HttpTrace"]


@dataclass(frozen=True, slots=True)
class HttpSource:
    """Who a rule is about, with groups already flattened: everyone, or names and tags."""

    everyone: bool
    names: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()

    def matches(self, subject: Subject) -> bool:
        return self.everyone or subject.name in self.names or not self.tags.isdisjoint(subject.tags)


@dataclass(frozen=True, slots=True)
class HttpGrant:
    """One http rule as the endpoint sees it; ``label``/``text`` name it in verdicts."""

    label: str
    text: str
    deny: bool
    source: HttpSource
    methods: frozenset[str] | None
    paths: tuple[str, ...] | None

    def admits(self, method: str, path: str) -> bool:
        method_ok = self.methods is None or method in self.methods
        return method_ok and (
            self.paths is None or any(path_has_prefix(path, p) for p in self.paths)
        )


@dataclass(frozen=True, slots=True)
class HttpTrace:
    """How one grant related to one request (for `explain_http`)."""

    grant: HttpGrant
    matched: bool
    decisive: bool
    why: str


@dataclass(frozen=True, slots=True)
class HttpFragment:
    """The http rules about one service, in policy order."""

    service: str
    grants: tuple[HttpGrant, ...]

    def decide(self, subject: Subject, method: str, path: str) -> Verdict:
        """May ``subject`` send ``method path`` to this service?"""
        return self.trace(subject, method, path)[0]

    def trace(
        self, subject: Subject, method: str, path: str
    ) -> tuple[Verdict, tuple[HttpTrace, ...]]:
        """The verdict and, for each grant, whether it matched and why (or why not)."""
        if not self.grants:
            reason = f"no http rules name {self.service!r}; the dial rules decide alone"
            return Verdict.allow(reason), ()
        verb = method.upper()
        clean = normalize_path(path)
        if clean is None:
            shown = path[:80] if isinstance(path, str) else "?"
            return Verdict.deny(f"request path {shown!r} is not a valid path"), ()
        request = f"{subject.name} to {verb} {clean} on {self.service!r}"
        verdict: Verdict | None = None
        found: dict[int, HttpTrace] = {}
        for phase_deny in (True, False):
            for index, grant in enumerate(self.grants):
                if grant.deny is not phase_deny:
                    continue
                if not grant.source.matches(subject):
                    found[index] = HttpTrace(grant, False, False, f"src omits {subject.name}")
                    continue
                if not grant.admits(verb, clean):
                    found[index] = HttpTrace(grant, False, False, "method or path not covered")
                    continue
                decisive = verdict is None
                if decisive:
                    word = "denied" if grant.deny else "allowed"
                    verdict = Verdict(not grant.deny, f"{word} by {grant.label}: {grant.text}")
                why = "decides" if decisive else "matches, but an earlier rule decided"
                found[index] = HttpTrace(grant, True, decisive, why)
        if verdict is None:
            verdict = Verdict.deny(f"no http rule allows {request} (default deny)")
        return verdict, tuple(found[i] for i in sorted(found))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form to send to the hosting endpoint."""
        return {
            "service": self.service,
            "rules": [
                {
                    "label": g.label,
                    "text": g.text,
                    "deny": g.deny,
                    "everyone": g.source.everyone,
                    "names": sorted(g.source.names),
                    "tags": sorted(g.source.tags),
                    "methods": None if g.methods is None else sorted(g.methods),
                    "paths": None if g.paths is None else list(g.paths),
                }
                for g in self.grants
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HttpFragment:
        """Rebuild a fragment sent by the controller; raise `PolicyError("policy_http")`."""
        try:
            service = data["service"]
            grants = tuple(_grant(item) for item in data["rules"])
            if not isinstance(service, str):
                raise TypeError("service")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PolicyError("policy_http", f"malformed http fragment ({exc})") from None
        return cls(service, grants)


def _grant(item: Mapping[str, Any]) -> HttpGrant:
    def strings(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError("expected a list of strings")
        return tuple(value)

    def optional(value: Any) -> tuple[str, ...] | None:
        return None if value is None else strings(value)

    label, text, deny, everyone = item["label"], item["text"], item["deny"], item["everyone"]
    if not all(isinstance(v, str) for v in (label, text)):
        raise TypeError("label and text must be strings")
    if not isinstance(deny, bool) or not isinstance(everyone, bool):
        raise TypeError("deny and everyone must be booleans")
    methods = optional(item["methods"])
    paths = optional(item["paths"])
    if paths is not None and any(normalize_path(p) != p for p in paths):
        raise ValueError("paths must be normalized prefixes")
    source = HttpSource(
        everyone, frozenset(strings(item["names"])), frozenset(strings(item["tags"]))
    )
    return HttpGrant(
        label, text, deny, source, None if methods is None else frozenset(methods), paths
    )
