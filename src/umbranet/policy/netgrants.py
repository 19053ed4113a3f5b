"""Network rules compiled for one pair of identities: what the receiving peer's filter admits.

The controller sends each identity, for each peer in its view, ``reach``: the new flows that
peer may open towards it. The receiver's stateful filter (`proto.wireguard.flowfilter`)
admits exactly those (and the return traffic of its own flows). An entry is::

    tcp/443          a port (or tcp/8000-8100, tcp/*) on the receiver's own overlay addresses
    icmp             ICMP echo to its own addresses
    udp/53@10.1.0.0/16   the same, to addresses in a route the receiver serves (subnet / exit)
    !tcp/22@10.1.9.0/24  a deny inside a served route; the filter checks denies first
    tcp/*@internet   through an exit node, anywhere but the subnets the receiver routes to

An exit node's routes (``0.0.0.0/0``, ``::/0``) are granted only by rules covering all of
them: a rule for one LAN does not make its source a client of every exit node.

For the receiver's own addresses the deny rules are subtracted here (so an entry list never
needs a deny for them, and an older filter that only knows ``tcp/PORT`` never admits more
than policy allows), per address: what holds for all of them goes out plain, the rest
pinned to one address (``tcp/22@100.64.0.7/32``, which the filter also checks for its own
addresses). Inside routes, a deny narrower than the allow it cuts cannot be
subtracted from a prefix without splitting it, so it travels as a ``!`` entry; an older
filter ignores both, and admits nothing routed.

Why per pair and not per rule: the receiver must not learn the policy, only what each of
its peers may do to it (as with services).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from umbranet.policy.model import ALL_PORTS, NO_PORTS, PortSet, Subject
from umbranet.policy.network import (
    PROTOCOLS,
    IPAddress,
    IPNetwork,
    NetDst,
    NetRule,
    NetTarget,
    dst_matches,
    src_matches,
)

if TYPE_CHECKING:
    from umbranet.policy.engine import CompiledPolicy

__all__ = ["grants_towards", "may_reach", "routes_reachable"]


def grants_towards(
    policy: CompiledPolicy,
    src: Subject,
    dst: Subject,
    addresses: Sequence[IPAddress],
    routes: Sequence[IPNetwork] = (),
) -> list[str]:
    """``reach`` entries: the flows ``src`` may open towards ``dst`` (addresses ``addresses``,
    serving approved ``routes``), by the network rules alone."""
    rules = [r for r in policy.policy.network.rules if _covers_src(policy, r, src)]
    if not rules:
        return []
    dst_groups = policy.groups_of(dst)
    out: list[str] = []
    for proto in PROTOCOLS:
        # Per address: a CIDR rule may cover the IPv4 address and not the IPv6 one. Ports
        # both allow go out plain; the rest is pinned to its address (``@100.64.0.7/32``).
        each: list[tuple[IPAddress, PortSet]] = []
        for address in addresses:
            target = NetTarget(address, dst)
            allowed, denied = NO_PORTS, NO_PORTS
            for rule in rules:
                if proto not in rule.protocols:
                    continue
                for d in rule.dst:
                    if dst_matches(d, target, dst_groups):
                        ports = ALL_PORTS if proto == "icmp" else d.ports  # ICMP has no ports
                        if rule.deny:
                            denied = denied | ports
                        else:
                            allowed = allowed | ports
            each.append((address, allowed - denied))
        common = each[0][1] if each else NO_PORTS
        for _, ports in each[1:]:
            common = common - (common - ports)
        out.extend(_entries(proto, common, ""))
        for address, ports in each:
            out.extend(_entries(proto, ports - common, f"@{address}/{address.max_prefixlen}"))
    for route in routes:
        for proto in PROTOCOLS:
            for deny_pass in (True, False):
                for rule in rules:
                    if rule.deny != deny_pass or proto not in rule.protocols:
                        continue
                    for d in rule.dst:
                        inside = _inside(d, route)
                        if inside is None or (not rule.deny and not _reaches(d, route)):
                            continue
                        where = "internet" if d.kind == "internet" else inside
                        entries = _entries(proto, d.ports, f"@{where}")
                        out.extend(("!" + e if rule.deny else e) for e in entries)
    return list(dict.fromkeys(out))


def may_reach(
    policy: CompiledPolicy,
    src: Subject,
    dst: Subject,
    addresses: Sequence[IPAddress],
    routes: Sequence[IPNetwork] = (),
) -> bool:
    """Does some allow rule let ``src`` open anything towards ``dst`` or its routes?"""
    return any(not e.startswith("!") for e in grants_towards(policy, src, dst, addresses, routes))


def routes_reachable(
    policy: CompiledPolicy, subject: Subject, routes: Iterable[IPNetwork]
) -> list[IPNetwork]:
    """The routes (of one peer) inside which some allow rule lets ``subject`` reach
    something: only these are given to the subject, so its traffic elsewhere never leaves.
    An exit route (a /0) only when a rule covers all of it (``*``, ``0.0.0.0/0``, ``::/0``):
    a rule for one LAN must not pull every packet of the subject through an exit node."""
    rules = [
        r for r in policy.policy.network.rules if not r.deny and _covers_src(policy, r, subject)
    ]
    return [route for route in routes if any(_reaches(d, route) for r in rules for d in r.dst)]


def _reaches(dst: NetDst, route: IPNetwork) -> bool:
    inside = _inside(dst, route)
    return inside is not None and (route.prefixlen > 0 or inside == route)


def _covers_src(policy: CompiledPolicy, rule: NetRule, subject: Subject) -> bool:
    groups = policy.groups_of(subject)
    return any(src_matches(s, subject, groups) for s in rule.src)


def _inside(dst: NetDst, route: IPNetwork) -> IPNetwork | None:
    """The part of ``route`` a destination covers, when it is one prefix; None otherwise."""
    if dst.kind == "all":
        return route
    if dst.kind == "internet":
        return route if route.prefixlen == 0 else None
    if dst.network is None or dst.network.version != route.version:
        return None
    if dst.network.subnet_of(route):  # type: ignore[arg-type]
        return dst.network
    if route.subnet_of(dst.network):  # type: ignore[arg-type]
        return route
    return None


def _entries(proto: str, ports: PortSet, suffix: str) -> list[str]:
    if not ports:
        return []
    if proto == "icmp":
        return [f"icmp{suffix}"]
    if ports.is_all:
        return [f"{proto}/*{suffix}"]
    return [
        f"{proto}/{lo}{suffix}" if lo == hi else f"{proto}/{lo}-{hi}{suffix}"
        for lo, hi in ports.ranges
    ]
