"""Policy on every packet, at the receiver: a stateful filter over decrypted IP packets.

The WireGuard device proves who sent a packet (the peer's key; its source address is one
the peer may use). This filter decides whether that peer may send it *to us*:

- a packet must be addressed to one of this device's own overlay addresses (``not_for_us``
  otherwise: a peer may not use us as a router);
- a packet that belongs to a flow *we* started (its reverse was seen leaving: a TCP SYN, a
  UDP datagram that answered nothing, an ICMP echo request) passes, from the peer we sent
  it to (return traffic);
- anything else is a new flow of the peer's and passes only if the peer's grant holds it:
  ``tcp/PORT`` or ``udp/PORT`` (from the controller's view: the services we host that the
  peer may dial, at their host ports, and the network rules of the policy), and ICMP echo
  requests only from a peer whose grant has ``icmp`` (a network rule whose protocols include
  it, or any service of ours the peer may dial: the controller adds it to the view);
- a packet for an address inside a route we serve (a subnet router's LAN, an exit node's
  internet) passes only if the grant names that prefix, protocol and port and no deny entry
  does (``route_denied``, ``route_no_grant``); a destination inside no granted route is
  ``not_for_us``. The kernel then forwards it (see `agent.tunplan`).

Grants are re-checked on every packet of a peer's flow, not remembered: when `set_grants`
takes a grant away (a policy change, a revoked identity) the next packet of a live flow is
dropped. Flows we started live until idle for `FLOW_IDLE` seconds; the table is bounded
(`max_flows`; the least recently used flow is forgotten first). A datagram we send in answer
to one of the peer's flows never counts as a flow of ours, so a peer cannot turn its own
granted flow into return traffic that outlives the grant.

Every drop is counted under a reason in `statistics()["drops"]`: ``not_ip``, ``not_for_us``,
``fragment``, ``truncated``, ``no_grant`` (a new flow to a port the peer may not reach),
``icmp_no_grant``, ``route_denied``, ``route_no_grant``, ``unknown_protocol``. Pure: no
IO, no clock (``now`` is seconds).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FLOW_IDLE", "FlowFilter", "Grant", "parse_grant"]

FLOW_IDLE = {6: 300.0, 17: 60.0, 1: 30.0, 58: 30.0}
_TCP, _UDP, _ICMP, _ICMP6 = 6, 17, 1, 58
_PROTOCOLS = {"tcp": _TCP, "udp": _UDP}
_ECHO_REQUEST = {_ICMP: 8, _ICMP6: 128}
_ECHO_REPLY = {_ICMP: 0, _ICMP6: 129}
# ICMP errors (unreachable, time exceeded, too big, parameter problem): passed when the packet
# they quote belongs to a live flow we started, since path MTU discovery needs them.
_ICMP_ERRORS = {_ICMP: {3, 11, 12}, _ICMP6: {1, 2, 3, 4}}
_TCP_SYN, _TCP_ACK = 0x02, 0x10
_PORTS = struct.Struct("!HH")
_V4_FIELDS = struct.Struct("!6xHxB2xII")  # fragment field, protocol, source, destination

# (ip version, protocol, local address, local port, remote address, remote port)
FlowKey = tuple[int, int, int, int, int, int]


# (deny, protocol, low port, high port, ip version, network, mask, internet)
RoutedEntry = tuple[bool, int, int, int, int, int, int, bool]
# (ip version, network, mask) of a subnet we route to
Prefix = tuple[int, int, int]
_INTERNET = (
    (4, 0, 0),
    (6, 0, 0),
)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one peer may open towards us.

    ``ports``: (protocol, port) pairs on our own addresses (the common case, one set lookup);
    ``ranges``: (protocol, low, high) on our own addresses; ``icmp``: echo requests to them;
    ``routed``: entries for addresses inside a route we serve (subnet router, exit node),
    denies checked first; an ``internet`` entry (``@internet``: through an exit node) does
    not cover the subnets we route to (`FlowFilter.set_served`), whose own entries decide.
    """

    ports: frozenset[tuple[int, int]]
    ranges: tuple[tuple[int, int, int], ...] = ()
    icmp: bool = False
    routed: tuple[RoutedEntry, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.ports or self.ranges or self.icmp)

    def local(self, proto: int, port: int) -> bool:
        if (proto, port) in self.ports:
            return True
        return any(p == proto and lo <= port <= hi for p, lo, hi in self.ranges)

    def route(
        self, version: int, proto: int, address: int, port: int, served: tuple[Prefix, ...] = ()
    ) -> str | None:
        """None if a routed entry admits the packet, else the drop reason."""
        admitted = False
        lan: bool | None = None
        for deny, p, lo, hi, v, network, mask, internet in self.routed:
            if v != version or address & mask != network or p != proto or not lo <= port <= hi:
                continue
            if internet:
                if lan is None:
                    lan = any(v == sv and address & sm == sn for sv, sn, sm in served)
                if lan:
                    continue
            if deny:
                return "route_denied"
            admitted = True
        return None if admitted else "route_no_grant"

    def serves(self, version: int, address: int) -> bool:
        """Is `address` inside some route this grant names (so not simply misaddressed)?"""
        return any(e[4] == version and address & e[6] == e[5] for e in self.routed)


def parse_grant(entries: Iterable[str]) -> Grant:
    """``["tcp/8080", "udp/1000-2000", "icmp", "tcp/443@10.1.0.0/16", "!tcp/22@10.1.9.0/24",
    "tcp/*@internet"]`` -> Grant (see `umbranet.policy.netgrants` for the format). Entries of
    other shapes are ignored: a newer controller may send kinds this version does not know,
    and ignoring an entry only ever admits less."""
    ports: set[tuple[int, int]] = set()
    ranges: list[tuple[int, int, int]] = []
    routed: list[RoutedEntry] = []
    icmp = False
    for entry in entries:
        deny = entry.startswith("!")
        body, at, prefix = entry.lstrip("!").partition("@")
        name, _, spec = body.partition("/")
        if name == "icmp" and not spec:
            proto, low, high = _ICMP, 0, 0
        elif name in _PROTOCOLS and (span := _port_span(spec)) is not None:
            proto, (low, high) = _PROTOCOLS[name], span
        else:
            continue
        if at:
            internet = prefix == "internet"
            if internet:
                prefixes: tuple[Prefix, ...] = _INTERNET
            else:
                try:
                    network = ipaddress.ip_network(prefix, strict=False)
                except ValueError:
                    continue
                base, mask = int(network.network_address), int(network.netmask)
                prefixes = ((network.version, base, mask),)
            for version, base, mask in prefixes:
                number = _ICMP6 if proto == _ICMP and version == 6 else proto
                routed.append((deny, number, low, high, version, base, mask, internet))
        elif deny:
            continue  # denies on our own addresses are already subtracted by the controller
        elif proto == _ICMP:
            icmp = True
        elif low == high:
            ports.add((proto, low))
        else:
            ranges.append((proto, low, high))
    return Grant(frozenset(ports), tuple(ranges), icmp, tuple(routed))


def _port_span(spec: str) -> tuple[int, int] | None:
    if spec == "*":
        return 1, 65535
    low, _, high = spec.partition("-")
    if not low.isdigit() or (high and not high.isdigit()) or len(low) > 5 or len(high) > 5:
        return None
    span = int(low), int(high) if high else int(low)
    return span if 0 < span[0] <= span[1] < 65536 else None


class FlowFilter:
    """``handle_outbound(packet, now)`` for what we send; ``check_inbound(peer, packet, now)``
    (None: pass; otherwise the drop reason, already counted) for what a peer sent us."""

    def __init__(self, local: Iterable[str], *, max_flows: int = 65536) -> None:
        self._local = {(a.version, int(a)) for a in (ipaddress.ip_address(text) for text in local)}
        self._grants: dict[bytes, Grant] = {}
        self._served: tuple[Prefix, ...] = ()
        self._ours: OrderedDict[FlowKey, tuple[bytes | None, float]] = OrderedDict()
        self._theirs: OrderedDict[FlowKey, float] = OrderedDict()
        self._max = max_flows
        self.drops: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()

    def set_grants(self, grants: Mapping[bytes, Grant]) -> None:
        """Replace every peer's grant; takes effect on the next packet of every flow."""
        self._grants = dict(grants)

    def set_served(self, prefixes: Iterable[str]) -> None:
        """The subnets we route to (``--advertise-routes``): ``@internet`` grants stop there."""
        networks = [ipaddress.ip_network(p, strict=False) for p in prefixes]
        self._served = tuple((n.version, int(n.network_address), int(n.netmask)) for n in networks)

    def handle_outbound(self, packet: bytes, now: float, peer: bytes | None = None) -> None:
        """A packet leaving for a peer: remember the flow if it is one we start."""
        parsed = _parse(packet)
        if isinstance(parsed, str):
            return
        version, proto, src, dst, sport, dport, flags = parsed
        key = (version, proto, src, sport, dst, dport)
        if proto == _TCP:
            starts = flags & (_TCP_SYN | _TCP_ACK) == _TCP_SYN
        elif proto in (_ICMP, _ICMP6):
            starts = flags == _ECHO_REQUEST[proto]
        else:
            starts = proto == _UDP and not self._live(self._theirs, key, proto, now)
        if starts or key in self._ours:
            self._remember(self._ours, key, (peer, now))
            if starts:
                self.counts["flows_started"] += 1

    def check_inbound(self, peer: bytes, packet: bytes, now: float) -> str | None:
        """None if `peer` may deliver `packet` to us now; else the (counted) drop reason."""
        reason = self._verdict(peer, packet, now)
        if reason is None:
            self.counts["passed"] += 1
        else:
            self.drops[reason] += 1
        return reason

    def handle_outbound_batch(self, packets: Sequence[bytes], now: float) -> None:
        """`handle_outbound` for each packet of one read: TCP segments of one flow that start
        nothing (no SYN) change the tables alike at one `now`, so only the first of each
        is looked at (the bulk of any transfer); every other packet is looked at alone."""
        if len(packets) == 1:  # a request or an answer: nothing to share
            self.handle_outbound(packets[0], now)
            return
        seen: set[bytes] = set()
        for packet in packets:
            sig = _signature(packet)
            if sig is not None and packet[9 if packet[0] == 0x45 else 6] == _TCP:
                if sig[-1] & _TCP_SYN:
                    self.handle_outbound(packet, now)
                    continue
                if sig in seen:
                    continue
                seen.add(sig)
            self.handle_outbound(packet, now)

    def check_inbound_batch(self, peer: bytes, packets: Sequence[bytes], now: float) -> list[bytes]:
        """The packets of `packets` that `peer` may deliver now (drops counted by reason, as
        `check_inbound`); one verdict per flow per batch, since grants and flow tables do not
        change between its packets."""
        if len(packets) == 1:
            return [packets[0]] if self.check_inbound(peer, packets[0], now) is None else []
        passed: list[bytes] = []
        verdicts: dict[bytes, str | None] = {}
        dropped = 0
        for packet in packets:
            sig = _signature(packet)
            if sig is None:
                reason = self._verdict(peer, packet, now)
            elif sig in verdicts:
                reason = verdicts[sig]
            else:
                reason = verdicts[sig] = self._verdict(peer, packet, now)
            if reason is None:
                passed.append(packet)
            else:
                self.drops[reason] += 1
                dropped += 1
        if passed:
            self.counts["passed"] += len(passed)
        return passed

    def statistics(self) -> dict[str, object]:
        return {
            "flows": len(self._ours),
            "peer_flows": len(self._theirs),
            "peers_with_grants": sum(1 for g in self._grants.values() if g.any),
            "drops": dict(self.drops),
            **self.counts,
        }

    # -- internals ----------------------------------------------------------------------

    def _verdict(self, peer: bytes, packet: bytes, now: float) -> str | None:
        parsed = _parse(packet)
        if isinstance(parsed, str):
            return parsed
        version, proto, src, dst, sport, dport, flags = parsed
        routed = (version, dst) not in self._local
        grant = self._grants.get(peer)
        if routed and (grant is None or not grant.serves(version, dst)):
            return "not_for_us"
        key = (version, proto, dst, dport, src, sport)
        if proto in (_ICMP, _ICMP6):
            key = (version, proto, dst, sport, src, 0)  # an echo's identifier on both sides
            if flags == _ECHO_REPLY[proto]:
                return None if self._return_traffic(key, peer, now) else "icmp_no_grant"
            if flags in _ICMP_ERRORS[proto]:
                quoted = _quoted_flow(packet, version)
                if quoted is not None and self._return_traffic(quoted, peer, now, reverse=False):
                    return None
                return "icmp_no_grant"
            if flags != _ECHO_REQUEST[proto] or grant is None:
                return "icmp_no_grant"
            served = self._served
            pinned = bool(grant.routed) and grant.route(version, proto, dst, 0, served) is None
            if routed:
                return None if pinned else "icmp_no_grant"
            return None if grant.icmp or pinned else "icmp_no_grant"
        if self._return_traffic(key, peer, now):
            return None
        if grant is None:
            return "no_grant"
        if routed:
            reason = grant.route(version, proto, dst, dport, self._served)
            if reason is not None:
                return reason
        elif (
            (proto, dport) not in grant.ports
            and not grant.local(proto, dport)
            and (
                not grant.routed
                or grant.route(version, proto, dst, dport, self._served) is not None
            )
        ):  # the set lookup first: it is the common case and a method call costs more
            return "no_grant"  # (entries pinned to one of our addresses are checked too)
        if proto == _UDP:
            self._remember(self._theirs, key, now)
        return None

    def _return_traffic(
        self, key: FlowKey, peer: bytes, now: float, *, reverse: bool = True
    ) -> bool:
        """Is `key` a live flow of ours (with `peer`, if we know which)? An ICMP error's
        quoted packet is already in our direction (``reverse=False``) and does not refresh
        the flow."""
        entry = self._ours.get(key)
        if entry is None:
            return False
        owner, seen = entry
        if now - seen > FLOW_IDLE.get(key[1], 30.0):
            del self._ours[key]
            return False
        if owner is not None and owner != peer:
            return False
        if reverse:
            self._ours[key] = (owner, now)
            self._ours.move_to_end(key)
        return True

    def _live(
        self, table: OrderedDict[FlowKey, float], key: FlowKey, proto: int, now: float
    ) -> bool:
        seen = table.get(key)
        return seen is not None and now - seen <= FLOW_IDLE.get(proto, 30.0)

    def _remember(self, table: OrderedDict[FlowKey, Any], key: FlowKey, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self._max:
            table.popitem(last=False)
            self.counts["flows_evicted"] += 1


def _quoted_flow(packet: bytes, version: int) -> FlowKey | None:
    """The flow of the packet an ICMP error quotes (its IP header and first 8 bytes), keyed
    as we would have keyed it when sending; None if it is not quoted whole enough."""
    start = ((packet[0] & 0x0F) * 4 if version == 4 else 40) + 8
    inner = packet[start:]
    if version == 4 and len(inner) >= 20 and inner[0] >> 4 == 4:
        header, proto = (inner[0] & 0x0F) * 4, inner[9]
        src, dst = int.from_bytes(inner[12:16], "big"), int.from_bytes(inner[16:20], "big")
    elif version == 6 and len(inner) >= 40 and inner[0] >> 4 == 6:
        header, proto = 40, inner[6]
        src, dst = int.from_bytes(inner[8:24], "big"), int.from_bytes(inner[24:40], "big")
    else:
        return None
    head = inner[header : header + 8]
    if len(head) < 8:
        return None
    if proto in (_TCP, _UDP):
        return (version, proto, src, int.from_bytes(head[0:2], "big"), dst,
                int.from_bytes(head[2:4], "big"))  # fmt: skip
    if proto in (_ICMP, _ICMP6) and head[0] == _ECHO_REQUEST[proto]:
        return version, proto, src, int.from_bytes(head[4:6], "big"), dst, 0
    return None


def _parse(packet: bytes) -> tuple[int, int, int, int, int, int, int] | str:
    """(version, protocol, source, destination, source port, destination port, flags) or
    a drop reason. For ICMP the ports are (echo identifier, 0) and flags the ICMP type; for
    TCP flags are the TCP flag byte."""
    if not packet:
        return "not_ip"
    version = packet[0] >> 4
    if version == 4:
        header = (packet[0] & 0x0F) * 4
        if len(packet) < 20 or header < 20:
            return "not_ip"
        fragment, proto, src, dst = _V4_FIELDS.unpack_from(packet)
        if fragment & 0x1FFF:
            return "fragment"
    elif version == 6:
        header = 40
        if len(packet) < 40:
            return "not_ip"
        proto = packet[6]
        if proto == 44:  # fragment header: only whole datagrams carry ports
            return "fragment"
        src = int.from_bytes(packet[8:24], "big")
        dst = int.from_bytes(packet[24:40], "big")
    else:
        return "not_ip"
    # Offsets into the packet rather than a slice of its body: a slice copies the payload.
    h, size = header, len(packet) - header
    if proto in (_TCP, _UDP):
        if size < (14 if proto == _TCP else 8):
            return "truncated"
        ports = _PORTS.unpack_from(packet, h)
        flags = packet[h + 13] if proto == _TCP else 0
        return version, proto, src, dst, ports[0], ports[1], flags
    if proto == (_ICMP if version == 4 else _ICMP6):
        if size < 8:
            return "truncated"
        kind = packet[h]
        echo = kind in (_ECHO_REQUEST[proto], _ECHO_REPLY[proto])
        ident = _PORTS.unpack_from(packet, h + 4)[0] if echo else 0
        return version, proto, src, dst, ident, 0, kind
    return "unknown_protocol"


def _signature(packet: bytes) -> bytes | None:
    """The header bytes every verdict and table change depends on (fragment bits, protocol,
    addresses, ports or ICMP type and identifier, TCP flags), for a packet long enough to
    hold them all; None when the packet must be looked at on its own."""
    if len(packet) < 60:
        return None
    first = packet[0]
    if first == 0x45:
        return packet[6:8] + packet[9:10] + packet[12:26] + packet[33:34]
    if first >> 4 == 6 and packet[6] in (_TCP, _UDP):
        return packet[6:7] + packet[8:44] + packet[53:54]
    return None
