"""The receiver's packet filter: new flows need a grant, return traffic of ours passes, a
withdrawn grant stops a live flow at its next packet, and every drop has a counted reason."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from umbranet.proto.wireguard.flowfilter import FLOW_IDLE, FlowFilter, parse_grant

ME, PEER, OTHER = "100.64.0.1", "100.64.0.2", "100.64.0.3"
ME6, PEER6 = "fd00::1", "fd00::2"
K_PEER, K_OTHER = b"p" * 32, b"o" * 32


def ipv4(src: str, dst: str, proto: int, body: bytes, frag: int = 0) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(body),
        0,
        frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + body


def ipv6(src: str, dst: str, proto: int, body: bytes) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(body), proto, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + body
    )


def tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, flags, 1024, 0, 0)


def udp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8, 0)


def echo(kind: int, ident: int) -> bytes:
    return struct.pack("!BBHHH", kind, 0, 0, ident, 1)


SYN, SYNACK, ACK = 0x02, 0x12, 0x10


def make() -> FlowFilter:
    f = FlowFilter([ME, ME6])
    f.set_grants({K_PEER: parse_grant(["tcp/8080", "udp/53", "sctp/9", "tcp/x"])})
    return f


def test_a_granted_port_passes_and_others_are_dropped_and_counted() -> None:
    f = make()
    assert f.check_inbound(K_PEER, ipv4(PEER, ME, 6, tcp(40000, 8080, SYN)), 0.0) is None
    assert f.check_inbound(K_PEER, ipv4(PEER, ME, 6, tcp(40000, 22, SYN)), 0.0) == "no_grant"
    assert f.check_inbound(K_OTHER, ipv4(OTHER, ME, 6, tcp(1, 8080, SYN)), 0.0) == "no_grant"
    assert f.check_inbound(K_PEER, ipv6(PEER6, ME6, 17, udp(5000, 53)), 0.0) is None
    assert f.statistics()["drops"] == {"no_grant": 2}


def test_withdrawing_the_grant_stops_a_live_flow_at_its_next_packet() -> None:
    f = make()
    assert f.check_inbound(K_PEER, ipv4(PEER, ME, 6, tcp(40000, 8080, SYN)), 0.0) is None
    f.handle_outbound(ipv4(ME, PEER, 6, tcp(8080, 40000, SYNACK)), 0.1, K_PEER)
    assert f.check_inbound(K_PEER, ipv4(PEER, ME, 6, tcp(40000, 8080, ACK)), 0.2) is None
    f.set_grants({})
    assert f.check_inbound(K_PEER, ipv4(PEER, ME, 6, tcp(40000, 8080, ACK)), 0.3) == "no_grant"


def test_our_udp_answers_do_not_become_our_flows() -> None:
    """Answering a peer's granted UDP flow must not make it return traffic that outlives the
    grant."""
    f = make()
    assert f.check_inbound(K_PEER, ipv4(PEER, ME, 17, udp(5000, 53)), 0.0) is None
    f.handle_outbound(ipv4(ME, PEER, 17, udp(53, 5000)), 0.1, K_PEER)
    f.set_grants({})
    assert f.check_inbound(K_PEER, ipv4(PEER, ME, 17, udp(5000, 53)), 0.2) == "no_grant"


def test_return_traffic_of_our_flows_passes_only_from_that_peer_and_while_fresh() -> None:
    f = FlowFilter([ME])  # no grants at all
    f.handle_outbound(ipv4(ME, PEER, 6, tcp(50000, 443, SYN)), 0.0, K_PEER)
    assert f.check_inbound(K_PEER, ipv4(PEER, ME, 6, tcp(443, 50000, SYNACK)), 1.0) is None
    assert f.check_inbound(K_OTHER, ipv4(PEER, ME, 6, tcp(443, 50000, ACK)), 1.0) == "no_grant"
    late = 1.0 + FLOW_IDLE[6] + 1
    assert f.check_inbound(K_PEER, ipv4(PEER, ME, 6, tcp(443, 50000, ACK)), late) == "no_grant"
    # A bare ACK we send does not start a flow: only a SYN does.
    f.handle_outbound(ipv4(ME, PEER, 6, tcp(50001, 443, ACK)), 2.0, K_PEER)
    assert f.check_inbound(K_PEER, ipv4(PEER, ME, 6, tcp(443, 50001, ACK)), 2.0) == "no_grant"


def test_ping_needs_an_icmp_grant_but_replies_to_our_pings_pass() -> None:
    f = make()
    # A grant of ports only (a network rule with "proto": ["tcp"]) does not let it ping us.
    assert f.check_inbound(K_PEER, ipv4(PEER, ME, 1, echo(8, 7)), 0.0) == "icmp_no_grant"
    f.set_grants({K_PEER: parse_grant(["tcp/8080", "icmp"])})
    assert f.check_inbound(K_PEER, ipv4(PEER, ME, 1, echo(8, 7)), 0.0) is None
    assert f.check_inbound(K_PEER, ipv6(PEER6, ME6, 58, echo(128, 7)), 0.0) is None
    assert f.check_inbound(K_OTHER, ipv4(OTHER, ME, 1, echo(8, 7)), 0.0) == "icmp_no_grant"
    assert f.check_inbound(K_OTHER, ipv4(OTHER, ME, 1, echo(0, 9)), 0.0) == "icmp_no_grant"
    f.handle_outbound(ipv4(ME, OTHER, 1, echo(8, 9)), 0.0, K_OTHER)
    assert f.check_inbound(K_OTHER, ipv4(OTHER, ME, 1, echo(0, 9)), 0.1) is None
    f.handle_outbound(ipv6(ME6, PEER6, 58, echo(128, 3)), 0.0, K_PEER)
    assert f.check_inbound(K_PEER, ipv6(PEER6, ME6, 58, echo(129, 3)), 0.1) is None


def test_packets_not_for_us_and_odd_packets_have_their_reasons() -> None:
    f = make()
    assert f.check_inbound(K_PEER, ipv4(PEER, "10.0.0.1", 6, tcp(1, 8080, SYN)), 0) == "not_for_us"
    assert f.check_inbound(K_PEER, ipv4(PEER, ME, 6, tcp(1, 8080, SYN), frag=5), 0) == "fragment"
    assert f.check_inbound(K_PEER, ipv4(PEER, ME, 6, b"\x00"), 0) == "truncated"
    assert f.check_inbound(K_PEER, ipv4(PEER, ME, 47, b"gre!"), 0) == "unknown_protocol"
    assert f.check_inbound(K_PEER, b"", 0) == "not_ip"


def test_the_flow_table_is_bounded() -> None:
    f = FlowFilter([ME], max_flows=4)
    for port in range(10):
        f.handle_outbound(ipv4(ME, PEER, 6, tcp(port + 1, 443, SYN)), 0.0, K_PEER)
    assert f.statistics()["flows"] == 4
    assert f.statistics()["flows_evicted"] == 6


@given(st.binary(max_size=80), st.booleans())
def test_any_bytes_are_a_verdict_never_an_exception(data: bytes, outbound: bool) -> None:
    f = make()
    if outbound:
        f.handle_outbound(data, 0.0, K_PEER)
    else:
        assert f.check_inbound(K_PEER, data, 0.0) in {
            None,
            "not_ip",
            "not_for_us",
            "fragment",
            "truncated",
            "no_grant",
            "icmp_no_grant",
            "unknown_protocol",
        }


def test_icmp_errors_pass_only_when_they_quote_a_live_flow_of_ours() -> None:
    """Path MTU discovery needs "too big" and "unreachable"; a peer must not use them to send
    us anything else."""
    f = FlowFilter([ME, ME6])
    sent = ipv4(ME, PEER, 6, tcp(50000, 443, SYN))
    f.handle_outbound(sent, 0.0, K_PEER)
    quoted = sent[:28]  # the header and the first 8 bytes, as an ICMP error quotes them
    unreachable = ipv4(PEER, ME, 1, struct.pack("!BBHI", 3, 4, 0, 1400) + quoted)
    assert f.check_inbound(K_PEER, unreachable, 0.1) is None
    stranger = ipv4(ME, PEER, 6, tcp(50001, 443, SYN))[:28]
    forged = ipv4(PEER, ME, 1, struct.pack("!BBHI", 3, 4, 0, 1400) + stranger)
    assert f.check_inbound(K_PEER, forged, 0.1) == "icmp_no_grant"
    sent6 = ipv6(ME6, PEER6, 17, udp(4000, 53))
    f.handle_outbound(sent6, 0.0, K_PEER)
    too_big = ipv6(PEER6, ME6, 58, struct.pack("!BBHI", 2, 0, 0, 1280) + sent6[:48])
    assert f.check_inbound(K_PEER, too_big, 0.1) is None
    assert f.check_inbound(
        K_PEER, ipv6(PEER6, ME6, 58, struct.pack("!BBHI", 2, 0, 0, 1280)), 0.1
    ) == ("icmp_no_grant")


# -- against a reference model ------------------------------------------------------------------

_PROTO = {"tcp": 6, "udp": 17, "icmp": 1}
_op = st.one_of(
    st.tuples(
        st.just("out"), st.sampled_from(["tcp", "udp", "icmp"]), st.integers(1, 2),
        st.integers(1, 2), st.sampled_from([SYN, SYNACK, ACK]),
    ),
    st.tuples(
        st.just("in"), st.sampled_from(["tcp", "udp", "icmp"]), st.integers(1, 2),
        st.integers(1, 2), st.sampled_from([SYN, SYNACK, ACK]),
    ),
    st.tuples(
        st.just("grant"), st.sets(st.sampled_from(["tcp/1", "tcp/2", "udp/1", "udp/2", "icmp"]))
    ),
    st.tuples(st.just("wait"), st.sampled_from([0.0, 1.0, 31.0, 61.0, 301.0])),
)  # fmt: skip


def _packet(direction: str, proto: str, sport: int, dport: int, flags: int) -> bytes:
    src, dst = (ME, PEER) if direction == "out" else (PEER, ME)
    if proto == "icmp":
        # out: our echo request; in: an echo reply or a request of the peer's (by flags)
        kind = 8 if direction == "out" or flags == SYN else 0
        return ipv4(src, dst, 1, echo(kind, sport))
    body = tcp(sport, dport, flags) if proto == "tcp" else udp(sport, dport)
    return ipv4(src, dst, _PROTO[proto], body)


class _Model:
    """The filter's rules written as plainly as possible (no eviction: the table is large)."""

    def __init__(self) -> None:
        self.ours: dict[tuple[str, int, int], float] = {}
        self.theirs: dict[tuple[str, int, int], float] = {}
        self.grant: set[str] = set()

    def out(self, proto: str, sport: int, dport: int, flags: int, now: float) -> None:
        key = (proto, sport, dport if proto != "icmp" else 0)
        idle = FLOW_IDLE[_PROTO[proto]]
        if proto == "tcp":
            starts = flags == SYN
        elif proto == "icmp":
            starts = True
        else:
            seen = self.theirs.get(key)
            starts = seen is None or now - seen > idle
        if starts or key in self.ours:
            self.ours[key] = now

    def inbound(self, proto: str, sport: int, dport: int, flags: int, now: float) -> str | None:
        idle = FLOW_IDLE[_PROTO[proto]]
        if proto == "icmp":
            if flags == SYN:  # the peer's echo request
                return None if "icmp" in self.grant else "icmp_no_grant"
            key = ("icmp", sport, 0)
        else:
            key = (proto, dport, sport)
        seen = self.ours.get(key)
        if seen is not None and now - seen <= idle:
            self.ours[key] = now
            return None
        if seen is not None:
            del self.ours[key]
        if proto == "icmp":
            return "icmp_no_grant"
        if f"{proto}/{dport}" in self.grant:
            if proto == "udp":
                self.theirs[(proto, dport, sport)] = now
            return None
        return "no_grant"


@given(st.lists(_op, max_size=40))
def test_the_filter_agrees_with_a_reference_model(ops: list[tuple[Any, ...]]) -> None:
    f, model, now = FlowFilter([ME]), _Model(), 0.0
    for op in ops:
        if op[0] == "wait":
            now += op[1]
        elif op[0] == "grant":
            grant = set(op[1])
            model.grant = grant
            f.set_grants({K_PEER: parse_grant(grant)})
        else:
            _, proto, sport, dport, flags = op
            packet = _packet(op[0], proto, sport, dport, flags)
            if op[0] == "out":
                f.handle_outbound(packet, now, K_PEER)
                model.out(proto, sport, dport, flags, now)
            else:
                expected = model.inbound(proto, sport, dport, flags, now)
                assert f.check_inbound(K_PEER, packet, now) == expected, op


_BATCH_PACKETS = st.sampled_from(
    [
        ipv4(PEER, ME, 6, tcp(40000, 8080, ACK) + bytes(40)),
        ipv4(PEER, ME, 6, tcp(40000, 22, ACK) + bytes(40)),
        ipv4(PEER, ME, 6, tcp(40001, 22, SYN) + bytes(40)),
        ipv4(PEER, ME, 17, udp(5000, 53) + bytes(40)),
        ipv4(PEER, ME, 17, udp(5000, 54) + bytes(40)),
        ipv4(PEER, OTHER, 6, tcp(40000, 8080, ACK) + bytes(40)),
        ipv4(PEER, ME, 6, tcp(40000, 8080, ACK) + bytes(40), frag=0x2000),
        ipv4(PEER, ME, 1, echo(8, 7) + bytes(40)),
        ipv4(ME, PEER, 6, tcp(8080, 40000, SYN) + bytes(40)),
        ipv4(ME, PEER, 6, tcp(9000, 40002, SYN) + bytes(40)),
        ipv4(ME, PEER, 17, udp(6000, 7000) + bytes(40)),
        ipv4(PEER, ME, 6, tcp(40002, 9000, SYNACK) + bytes(40)),
        ipv4(PEER, ME, 17, udp(7000, 6000) + bytes(40)),
        ipv6(PEER6, ME6, 6, tcp(40000, 8080, ACK) + bytes(40)),
        ipv6(PEER6, ME6, 6, tcp(40000, 23, ACK) + bytes(40)),
        ipv4(PEER, ME, 6, tcp(40000, 8080, ACK)),
    ]
)


@given(st.lists(st.tuples(st.booleans(), st.lists(_BATCH_PACKETS, max_size=12)), max_size=8))
def test_batches_decide_exactly_as_packet_by_packet(
    reads: list[tuple[bool, list[bytes]]],
) -> None:
    """The driver filters a whole read at once (one verdict per flow per batch); what
    passes, what is dropped and every counter must be what one packet at a time gives."""
    single, batched = make(), make()
    for step, (outbound, packets) in enumerate(reads):
        now = float(step)
        if outbound:
            for packet in packets:
                single.handle_outbound(packet, now)
            batched.handle_outbound_batch(packets, now)
        else:
            expected = [p for p in packets if single.check_inbound(K_PEER, p, now) is None]
            assert batched.check_inbound_batch(K_PEER, packets, now) == expected
    assert batched.statistics() == single.statistics()
