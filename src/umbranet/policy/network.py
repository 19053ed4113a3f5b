"""Network-mode policy: which packets a peer may send to an address, and which routes count.

The ``network`` section of the policy document speaks of addresses rather than services::

    "network": [
      {"src": ["group:eng"], "dst": ["tag:db:5432", "10.1.0.0/16:443"], "proto": ["tcp"]},
      {"src": ["alice"], "dst": ["autogroup:internet"]},     // through an exit node
      {"src": ["*"], "dst": ["10.1.9.0/24:22"], "deny": true},
    ],
    "autoApprovers": {"routes": {"10.1.0.0/16": ["tag:router"]}, "exitNode": ["tag:exit"]},

A destination is a peer (``alice``, ``group:eng``, ``tag:db``: the overlay addresses of the
identities it covers), a CIDR (``10.1.0.0/16``, ``[fd00::/64]:443``: addresses behind a
subnet router, and overlay addresses inside it), ``autogroup:internet`` (through an exit
node; no peer) or ``*``, each with optional ports; ``proto`` narrows a rule to ``tcp``,
``udp`` and/or ``icmp`` (default: all three; ICMP ignores ports).
Sources are the same selectors as in ``rules``, resolved by the same groups
and tags, and the decision order is the same: deny rules first, in document order, then allow
rules, then default deny. Every verdict names the rule (``network[2] (line 14)``).

Why a section of its own rather than more kinds of ``dst`` in ``rules``: a service rule is
checked when a ticket is issued, a network rule on every packet by the receiving peer, from
grants the controller compiles per pair of identities (`netgrants`). Keeping the two apart
keeps today's indexes exact and lets each say what it means.

``autoApprovers`` approve advertised routes without an admin: a route is approved when it
lies inside a listed prefix whose selectors cover the advertising identity; an exit node
(``0.0.0.0/0``, ``::/0``) when ``exitNode`` covers it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from umbranet.policy.model import ALL_PORTS, PortSet, SrcSelector, Subject
from umbranet.policy.verdict import Verdict

if TYPE_CHECKING:
    from umbranet.policy.engine import CompiledPolicy

__all__ = [
    "PROTOCOLS",
    "AutoApprovers",
    "NetDst",
    "NetRule",
    "NetTarget",
    "NetTrace",
    "Network",
    "decide_packet",
    "dst_matches",
    "explain_packet",
    "parse_net_dst",
    "parse_target",
    "route_auto_approved",
    "src_matches",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PROTOCOLS: tuple[str, ...] = ("tcp", "udp", "icmp")
INTERNET = "autogroup:internet"
"""Addresses reached through an exit node: any address that is no peer's overlay address and
lies in no approved subnet route. Unlike ``0.0.0.0/0`` it names no peer and no LAN, so it
relates its sources to exit nodes only."""
EXIT_ROUTES: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("0.0.0.0/0"),
    ipaddress.ip_network("::/0"),
)


@dataclass(frozen=True, slots=True)
class NetDst:
    """``*``, a peer selector (``peer``) or a CIDR (``network``), with ports."""

    kind: Literal["all", "peer", "cidr", "internet"]
    peer: SrcSelector | None = None
    network: IPNetwork | None = None
    ports: PortSet = ALL_PORTS
    line: int | None = field(default=None, compare=False)
    column: int | None = field(default=None, compare=False)

    @property
    def text(self) -> str:
        if self.kind == "all":
            base = "*"
        elif self.kind == "internet":
            base = INTERNET
        elif self.peer is not None:
            base = self.peer.text
        else:
            assert self.network is not None
            base = f"[{self.network}]" if self.network.version == 6 else str(self.network)
        return base if self.ports.is_all else f"{base}:{self.ports}"


@dataclass(frozen=True, slots=True)
class NetRule:
    """One entry of ``network``: ``index`` is its position there."""

    index: int
    deny: bool
    src: tuple[SrcSelector, ...]
    dst: tuple[NetDst, ...]
    protocols: frozenset[str] = frozenset(PROTOCOLS)
    line: int | None = field(default=None, compare=False)
    column: int | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"network[{self.index}]{where}"

    @property
    def text(self) -> str:
        head = "deny " if self.deny else ""
        protos = "" if len(self.protocols) == len(PROTOCOLS) else "/".join(sorted(self.protocols))
        src = ", ".join(s.text for s in self.src)
        dst = ", ".join(d.text for d in self.dst)
        return f"{head}{src} -> {dst}" + (f" ({protos})" if protos else "")


@dataclass(frozen=True, slots=True)
class AutoApprovers:
    """Routes approved by policy: (prefix, who may advertise inside it), and exit nodes."""

    routes: tuple[tuple[IPNetwork, tuple[SrcSelector, ...]], ...] = ()
    exit_node: tuple[SrcSelector, ...] = ()


@dataclass(frozen=True, slots=True)
class Network:
    """The document's network part (empty when it has none)."""

    rules: tuple[NetRule, ...] = ()
    auto_approvers: AutoApprovers = AutoApprovers()


@dataclass(frozen=True, slots=True)
class NetTarget:
    """Where a packet goes: an address, and the identity holding it if it is an overlay one."""

    address: IPAddress
    peer: Subject | None = None
    # inside an approved subnet route (not the internet, whatever an exit node offers)
    in_subnet: bool = False

    @property
    def text(self) -> str:
        return f"{self.peer.name} ({self.address})" if self.peer is not None else str(self.address)


@dataclass(frozen=True, slots=True)
class NetTrace:
    """One network rule against one packet."""

    label: str
    text: str
    matched: bool
    decisive: bool
    why: str


def parse_net_dst(text: str) -> NetDst:
    """``*[:ports]``, ``[v6cidr]:ports``, ``CIDR[:ports]``, ``IP[:ports]`` or a peer selector
    with optional ports (``tag:db:5432``). ValueError (selector) / LookupError (ports)."""
    from umbranet.policy.schema import parse_src as src_parser

    head, spec = _split_ports(text)
    ports = _ports(text, spec)
    if head == "*":
        return NetDst("all", ports=ports)
    if head == INTERNET:
        return NetDst("internet", ports=ports)
    network = _as_network(head)
    if network is not None:
        return NetDst("cidr", network=network, ports=ports)
    if head.startswith("["):
        raise ValueError(f"{text!r}: {head!r} is not an IPv6 CIDR")
    selector = src_parser(head, allow_all=False)
    return NetDst("peer", peer=selector, ports=ports)


def parse_target(text: str) -> tuple[str, int | None, str]:
    """``10.1.2.3:443/tcp``, ``[fd00::1]:22/tcp``, ``10.1.2.3/icmp``, ``alice:80`` ->
    (host, port, protocol); protocol defaults to tcp. ValueError otherwise."""
    body, slash, proto = text.rpartition("/")
    if not slash or proto not in PROTOCOLS:
        body, proto = text, "tcp"
    if body.startswith("["):
        host, _, rest = body[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif body.count(":") == 1:
        host, _, port_text = body.partition(":")
    else:
        host, port_text = body, ""
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text[:6]) <= 65535:
            raise ValueError(f"{text!r}: port must be one number 1-65535")
        port = int(port_text)
    if not host:
        raise ValueError(f"{text!r}: expected ADDRESS[:PORT][/tcp|udp|icmp]")
    return host, port, proto


def decide_packet(
    policy: CompiledPolicy, subject: Subject, target: NetTarget, proto: str, port: int | None
) -> Verdict:
    """May ``subject`` open a ``proto`` flow to ``target`` (``port``; None = any port)?"""
    return explain_packet(policy, subject, target, proto, port)[0]


def explain_packet(
    policy: CompiledPolicy, subject: Subject, target: NetTarget, proto: str, port: int | None
) -> tuple[Verdict, tuple[NetTrace, ...], int]:
    """The verdict, every network rule naming the subject or the target, and how many
    rules named neither (counted, not listed)."""
    request = f"{subject.name} -> {target.text}" + (f":{port}" if port is not None else "")
    request += f"/{proto}"
    if proto not in PROTOCOLS:
        return Verdict.deny(f"unknown protocol {proto!r} (tcp, udp or icmp)"), (), 0
    groups = policy.groups_of(subject)
    peer_groups = policy.groups_of(target.peer) if target.peer is not None else frozenset()
    rules = policy.policy.network.rules
    traces: list[NetTrace] = []
    unrelated = 0
    verdict: Verdict | None = None
    for deny_pass in (True, False):
        for rule in rules:
            if rule.deny != deny_pass:
                continue
            src_ok = any(src_matches(s, subject, groups) for s in rule.src)
            dst_hits = [d for d in rule.dst if dst_matches(d, target, peer_groups)]
            if not src_ok and not dst_hits:
                unrelated += 1
                continue
            port_ok = any(
                proto == "icmp" or port is None or port in d.ports for d in dst_hits
            ) and (proto in rule.protocols)
            matched = src_ok and port_ok and verdict is None
            why = _why(src_ok, dst_hits, port_ok, rule, proto)
            if matched:
                word = "denied" if rule.deny else "allowed"
                verdict = Verdict(not rule.deny, f"{word} by {rule.label}: {rule.text}")
            traces.append(NetTrace(rule.label, rule.text, src_ok and port_ok, matched, why))
    if verdict is None:
        on = f":{port}" if port is not None else ""
        verdict = Verdict.deny(
            f"no network rule allows {subject.name} to reach {target.text}{on}/{proto} "
            "(default deny)"
        )
    return verdict, tuple(traces), unrelated


def route_auto_approved(policy: CompiledPolicy, subject: Subject, prefix: IPNetwork) -> bool:
    """Does ``autoApprovers`` approve ``subject`` advertising ``prefix``?"""
    approvers = policy.policy.network.auto_approvers
    groups = policy.groups_of(subject)
    if prefix in EXIT_ROUTES:
        return any(src_matches(s, subject, groups) for s in approvers.exit_node)
    return any(
        prefix.version == allowed.version
        and prefix.subnet_of(allowed)  # type: ignore[arg-type]
        and any(src_matches(s, subject, groups) for s in who)
        for allowed, who in approvers.routes
    )


# -- internals ----------------------------------------------------------------------------------


def src_matches(selector: SrcSelector, subject: Subject, groups: frozenset[str]) -> bool:
    from umbranet.policy.engine import selector_matches

    return selector_matches(selector, subject, groups)


def dst_matches(dst: NetDst, target: NetTarget, peer_groups: frozenset[str]) -> bool:
    if dst.kind == "all":
        return True
    if dst.kind == "internet":
        return target.peer is None and not target.in_subnet
    if dst.kind == "peer":
        assert dst.peer is not None
        return target.peer is not None and src_matches(dst.peer, target.peer, peer_groups)
    assert dst.network is not None
    return target.address.version == dst.network.version and target.address in dst.network


def _why(src_ok: bool, hits: list[NetDst], port_ok: bool, rule: NetRule, proto: str) -> str:
    if not src_ok:
        return "names the target but not the subject"
    if not hits:
        return "names the subject but not the target"
    if proto not in rule.protocols:
        return f"covers {'/'.join(sorted(rule.protocols))} only"
    if not port_ok:
        return "covers ports " + ", ".join(str(d.ports) for d in hits) + " only"
    return "applies"


def _split_ports(text: str) -> tuple[str, str]:
    """Split ``HEAD:PORTS``; IPv6 CIDRs carry ports only in brackets."""
    if text.startswith("["):
        head, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPv6 CIDR]:ports")
        return "[" + head, rest[1:] if rest else ""
    if text.count(":") > 1 and _as_network(text) is not None:
        return text, ""  # a bare IPv6 CIDR: no ports
    head, sep, tail = text.rpartition(":")
    if sep and head and (tail == "*" or tail[:1].isdigit()):
        return head, tail
    return text, ""


def _ports(text: str, spec: str) -> PortSet:
    if text.endswith(":"):
        raise LookupError(f"{text!r}: empty port list")
    try:
        return PortSet.parse(spec) if spec else ALL_PORTS
    except ValueError as exc:
        raise LookupError(str(exc)) from None


def _as_network(text: str) -> IPNetwork | None:
    candidate = text[1:] if text.startswith("[") else text
    if not candidate or not (candidate[0].isdigit() or ":" in candidate):
        return None
    try:
        return ipaddress.ip_network(candidate, strict=False)
    except ValueError:
        return None


def networks(texts: Iterable[str]) -> list[IPNetwork]:
    """Parse CIDRs (strict=False); ValueError names the first bad one."""
    out: list[IPNetwork] = []
    for text in texts:
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not a CIDR such as 10.1.0.0/16") from None
    return out
