"""The burst forms of the WireGuard device (`send_packets`, `handle_datagrams`) do exactly
what the same packets one by one do: the same datagrams leave, the same packets are
delivered in the same order, the same drops and counters, the same timers. Network mode
uses the burst forms on every TUN read and UDP GRO read; the single forms are the protocol
as specified, so they are the reference."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.wireguard_harness import A_ADDR, A_IP, B_ADDR, B_IP, Pair, ipv4_packet, key, make_pair
from umbranet.proto.wireguard import Device, PacketsReceived
from umbranet.proto.wireguard.crypto import public_key

OTHER_IP = "100.64.0.9"  # an address neither peer may use
TO_B = public_key(key("b"))

# What arrives at B, item by item: a new datagram of A's (a packet, from an address A may
# use or not, or a keepalive), an old one again, one damaged or cut short, or junk. Each
# item: (kind, index into what was sent, size or byte position, source, junk bytes, whether
# a burst ends after it).
_ITEM = st.tuples(
    st.sampled_from(["packet", "keepalive", "replay", "flip", "cut", "junk"]),
    st.integers(0, 60),
    st.integers(0, 1500),
    st.sampled_from([A_IP, OTHER_IP]),
    st.binary(max_size=80),
    st.booleans(),
)
Item = tuple[str, int, int, str, bytes, bool]


def _connected() -> Pair:
    """A pair with a session both ways; every call builds the same one (seeded)."""
    pair = make_pair(seed=7)
    pair.a.send_packet(ipv4_packet(A_IP, B_IP, b"hello"), pair.clock.now())
    pair.pump()
    pair.b.send_packet(ipv4_packet(B_IP, A_IP, b"back"), pair.clock.now())
    pair.pump()
    pair.take_events(A_ADDR)
    pair.take_events(B_ADDR)
    return pair


def _bursts(items: list[Item]) -> list[list[bytes]]:
    pair = _connected()
    sent: list[bytes] = []
    bursts: list[list[bytes]] = [[]]
    for kind, index, size, source, junk, ends in items:
        datagram: bytes | None = None
        if kind in ("packet", "keepalive"):
            packet = ipv4_packet(source, B_IP, bytes(size)) if kind == "packet" else b""
            pair.a.send_to(TO_B, packet, pair.clock.now())
            out = pair.a.poll_transmit()
            assert out is not None
            datagram = out[0]
            sent.append(datagram)
        elif kind == "junk":
            datagram = junk
        elif sent:
            old = sent[index % len(sent)]
            if kind == "replay":
                datagram = old
            elif kind == "flip":
                damaged = bytearray(old)
                damaged[size % len(damaged)] ^= 0x01
                datagram = bytes(damaged)
            else:
                datagram = old[: size % 48]
        if datagram is not None:
            bursts[-1].append(datagram)
        if ends:
            bursts.append([])
    return [burst for burst in bursts if burst]


def _delivered(device: Device) -> list[bytes]:
    got: list[bytes] = []
    while (event := device.poll_event()) is not None:
        if isinstance(event, PacketsReceived):
            got.extend(event.packets)
    return got


@settings(max_examples=80, deadline=None)
@given(st.lists(_ITEM, max_size=40))
def test_a_burst_is_received_as_its_datagrams_one_by_one(items: list[Item]) -> None:
    bursts = _bursts(items)
    one, many = _connected(), _connected()
    for burst in bursts:
        for datagram in burst:
            one.b.handle_datagram(datagram, A_ADDR, one.clock.now())
        many.b.handle_datagrams(burst, A_ADDR, many.clock.now())
    assert _delivered(many.b) == _delivered(one.b)
    assert many.b.statistics() == one.b.statistics()
    assert many.b.poll_timeout() == one.b.poll_timeout()
    assert many.b.take_transmit() == one.b.take_transmit()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([B_IP, OTHER_IP, "not ip"]), st.integers(0, 1500)),
        max_size=200,
    )
)
def test_a_burst_is_sent_as_its_packets_one_by_one(packets: list[tuple[str, int]]) -> None:
    built = [
        b"\x60garbage" if dst == "not ip" else ipv4_packet(A_IP, dst, bytes(size))
        for dst, size in packets
    ]
    one, many = _connected(), _connected()
    for packet in built:
        one.a.send_packet(packet, one.clock.now())
    many.a.send_packets(built, many.clock.now())
    assert many.a.take_transmit() == one.a.take_transmit()
    assert many.a.statistics() == one.a.statistics()
    assert many.a.poll_timeout() == one.a.poll_timeout()


def test_a_burst_to_a_peer_without_a_session_starts_one_handshake() -> None:
    one, many = make_pair(seed=3), make_pair(seed=3)
    built = [ipv4_packet(A_IP, B_IP, bytes([i])) for i in range(150)]
    for packet in built:
        one.a.send_packet(packet, one.clock.now())
    many.a.send_packets(built, many.clock.now())
    assert many.a.statistics() == one.a.statistics()  # 22 staged packets overflowed alike
    assert many.a.statistics()["counts"] == {"tx_initiations": 1}
    many.pump()
    assert [p[-1] for p in many.received(B_ADDR)] == list(range(22, 150))


def test_a_burst_longer_than_the_staging_queue_loses_nothing_on_a_live_session() -> None:
    pair = _connected()
    built = [ipv4_packet(A_IP, B_IP, i.to_bytes(2, "big")) for i in range(300)]
    pair.a.send_packets(built, pair.clock.now())
    pair.pump()
    assert pair.received(B_ADDR) == built
    assert not pair.a.statistics()["drops"]
