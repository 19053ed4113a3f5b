"""TUN segmentation offload: the kernel's TCP super-packets cut into segments a WireGuard peer
can take, and segments merged back into GSO writes, without losing or reordering a byte.

Frames are built here as the kernel builds them (virtio-net header, partial TCP checksum
holding the pseudo-header sum), so these tests need no TUN device and no root.
"""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.aio import tun_offload
from umbranet.aio.tun import _carries_data
from umbranet.aio.tun_offload import (
    DATA_VALID,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    NEEDS_CSUM,
    VNET_HDR,
    checksum,
    coalesce,
    unpack,
)

V4_SRC, V4_DST = bytes([100, 64, 0, 1]), bytes([100, 64, 0, 2])
V6_SRC, V6_DST = bytes.fromhex("fd7a" + "00" * 13 + "01"), bytes.fromhex("fd7a" + "00" * 13 + "02")
ACK, PSH, FIN, SYN = 0x10, 0x08, 0x01, 0x02


def _naive_checksum(data: bytes) -> int:
    """RFC 1071 word by word, the definition `checksum` must agree with."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo(src: bytes, dst: bytes, length: int) -> int:
    return int.from_bytes(src + dst, "big") % 0xFFFF + 6 + length


def _tcp_packet(
    v6: bool,
    payload: bytes,
    *,
    seq: int = 1000,
    flags: int = ACK,
    options: bytes = b"",
    ports: tuple[int, int] = (40000, 5201),
    ip_id: int = 7,
    partial: bool = False,
) -> bytes:
    """An IP/TCP packet; its TCP checksum complete, or (`partial`) the pseudo-header sum.
    (A sender numbers IPv4 IDs per segment, as the kernel does: tests pass `ip_id`.)"""
    thl = 20 + len(options)
    tcp = (
        struct.pack("!HHIIBBHHH", ports[0], ports[1], seq, 555, (thl // 4) << 4, flags, 500, 0, 0)
        + options
    )
    src, dst = (V6_SRC, V6_DST) if v6 else (V4_SRC, V4_DST)
    pseudo = _pseudo(src, dst, thl + len(payload))
    if partial:
        tcp = tcp[:16] + (pseudo % 0xFFFF).to_bytes(2, "big") + tcp[18:]
    else:
        tcp = tcp[:16] + checksum(tcp + payload, pseudo).to_bytes(2, "big") + tcp[18:]
    if v6:
        ip = struct.pack("!IHBB", 6 << 28, thl + len(payload), 6, 64) + src + dst
    else:
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + thl + len(payload), ip_id, 0x4000, 64, 6, 0)
        ip += src + dst
        ip = ip[:10] + checksum(ip).to_bytes(2, "big") + ip[12:]
    return ip + tcp + payload


def _super_frame(v6: bool, payload: bytes, mss: int, **kwargs: object) -> bytes:
    packet = _tcp_packet(v6, payload, partial=True, **kwargs)  # type: ignore[arg-type]
    ihl = 40 if v6 else 20
    hdr_len = ihl + (packet[ihl + 12] >> 4) * 4
    vnet = VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, hdr_len, mss, ihl, 16)
    return vnet + packet


def _checks_out(packet: bytes) -> bool:
    """Whether the IPv4 header checksum and the TCP checksum verify, as a receiver checks."""
    v6 = packet[0] >> 4 == 6
    ihl = 40 if v6 else 20
    if not v6 and int.from_bytes(packet[:ihl], "big") % 0xFFFF != 0:
        return False
    src, dst = (packet[8:24], packet[24:40]) if v6 else (packet[12:16], packet[16:20])
    tcp = packet[ihl:]
    padded = tcp + b"\0" if len(tcp) % 2 else tcp
    return (int.from_bytes(padded, "big") + _pseudo(src, dst, len(tcp))) % 0xFFFF == 0


def _payload(packet: bytes) -> bytes:
    ihl = 40 if packet[0] >> 4 == 6 else 20
    return packet[ihl + (packet[ihl + 12] >> 4) * 4 :]


def _seq(packet: bytes) -> int:
    ihl = 40 if packet[0] >> 4 == 6 else 20
    return int.from_bytes(packet[ihl + 4 : ihl + 8], "big")


@given(st.binary(max_size=300))
def test_checksum_is_rfc1071(data: bytes) -> None:
    assert checksum(data) % 0xFFFF == _naive_checksum(data) % 0xFFFF


@settings(max_examples=60, deadline=None)
@given(
    v6=st.booleans(),
    size=st.integers(min_value=1, max_value=20000),
    mss=st.integers(min_value=200, max_value=1460),
    seq=st.integers(min_value=0, max_value=2**32 - 1),
    push=st.booleans(),
    stamp=st.booleans(),
)
def test_split_then_coalesce_round_trips(  # noqa: PLR0917 (hypothesis draws each argument)
    v6: bool, size: int, mss: int, seq: int, push: bool, stamp: bool
) -> None:
    payload = bytes(i * 7 % 251 for i in range(size))
    options = b"\x01\x01\x08\x0a" + bytes(range(8)) if stamp else b""
    flags = ACK | (PSH if push else 0)
    refusals: Counter[str] = Counter()
    segments = unpack(
        _super_frame(v6, payload, mss, seq=seq, flags=flags, options=options), refusals
    )
    assert not refusals
    # every segment is one a WireGuard peer can carry and a receiver accepts
    assert len(segments) == -(-size // mss)
    assert all(len(_payload(s)) <= mss for s in segments)
    assert all(_checks_out(s) for s in segments)
    assert b"".join(_payload(s) for s in segments) == payload
    assert [_seq(s) for s in segments] == [(seq + i * mss) % 2**32 for i in range(len(segments))]
    ihl = 40 if v6 else 20
    assert all(s[ihl + 13] == ACK for s in segments[:-1])  # PSH only on the last
    assert segments[-1][ihl + 13] == flags
    # and merged again they make the same super-packet, which splits the same way
    frames = coalesce(segments)
    assert len(frames) == -(-len(segments) // 64)  # at most 64 segments per GSO write
    if len(segments) > 1:
        assert frames[0][1] == (GSO_TCPV6 if v6 else GSO_TCPV4)
        assert VNET_HDR.unpack_from(frames[0])[3] == mss
    again: list[bytes] = []
    for frame in frames:
        again.extend(unpack(frame, refusals))
    assert again == segments
    assert not refusals


def test_partial_checksum_of_a_plain_packet_is_completed() -> None:
    packet = _tcp_packet(False, b"hello", partial=True)
    frame = VNET_HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16) + packet
    [out] = unpack(frame, Counter())
    assert _checks_out(out)
    assert out == _tcp_packet(False, b"hello")


def test_coalesce_keeps_each_flows_order_and_passes_other_packets() -> None:
    a = [_tcp_packet(False, bytes([i]) * 100, seq=100 * i, ip_id=i) for i in range(4)]
    b = [
        _tcp_packet(False, bytes([i]) * 100, seq=100 * i, ports=(40001, 5201), ip_id=i)
        for i in range(4)
    ]
    icmp = bytes.fromhex("4500001c0000400040010000") + V4_SRC + V4_DST + bytes(8)
    gap = _tcp_packet(False, b"z" * 100, seq=10_000)  # not the next in flow a: a new run
    mixed = [a[0], b[0], a[1], icmp, b[1], a[2], b[2], a[3], b[3], gap]
    counters: Counter[str] = Counter()
    frames = coalesce(mixed, counters)
    assert tun_offload.VNET_HDR_LEN + len(icmp) in {len(f) for f in frames}
    delivered: list[bytes] = []
    for frame in frames:
        delivered.extend(unpack(frame, Counter()))
    for flow in (a, b):
        assert [p for p in delivered if p in flow] == flow
    assert delivered.index(gap) > max(delivered.index(p) for p in a)
    assert counters["tun_gro_writes"] == 2
    assert sorted(delivered) == sorted(mixed)


def test_segments_that_must_not_merge_are_left_alone() -> None:
    syn = _tcp_packet(False, b"x" * 10, flags=SYN | ACK)
    fin = _tcp_packet(False, b"x" * 10, seq=1010, flags=FIN | ACK)
    short_then_more = [
        _tcp_packet(False, b"s" * 50, seq=0),
        _tcp_packet(False, b"t" * 100, seq=50),  # longer than the first: cannot share an MSS
    ]
    for packets in ([syn, fin], short_then_more):
        frames = coalesce(packets)
        assert len(frames) == len(packets)
        assert all(f[:2] == bytes([DATA_VALID, GSO_NONE]) for f in frames)


def test_malformed_headers_are_refused_and_counted() -> None:
    good = _super_frame(False, b"p" * 3000, 1000)
    bad_ip_length = good[:12] + b"\xff\xff" + good[14:]
    cases = {
        "vnet_short_header": good[:5],
        "vnet_bad_gso_type": bytes([NEEDS_CSUM, 3]) + good[2:],  # UDP fragmentation offload
        "vnet_bad_gso_size": good[:4] + b"\0\0" + good[6:],
        "vnet_bad_ip_length": bad_ip_length,
        "vnet_bad_ip_header": VNET_HDR.pack(0, GSO_TCPV6, 60, 1000, 40, 16) + good[10:],
        "vnet_bad_csum_offsets": VNET_HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 9000, 16) + good[10:],
    }
    for reason, frame in cases.items():
        refusals: Counter[str] = Counter()
        assert unpack(frame, refusals) == []
        assert refusals == Counter({reason: 1}), reason


@settings(max_examples=300, deadline=None)
@given(
    header=st.tuples(st.integers(0, 255), st.sampled_from([0, 1, 3, 4, 0x81, 0x84, 200])),
    sizes=st.tuples(*[st.integers(0, 0xFFFF)] * 4),
    body=st.binary(max_size=200),
)
def test_arbitrary_frames_never_raise(
    header: tuple[int, int], sizes: tuple[int, int, int, int], body: bytes
) -> None:
    frame = VNET_HDR.pack(header[0], header[1], *sizes) + body
    refusals: Counter[str] = Counter()
    out = unpack(frame, refusals)
    assert out or sum(refusals.values()) == 1


@pytest.mark.parametrize("v6", [False, True])
def test_a_tun_read_stops_after_one_small_message_but_not_after_a_pure_ack(v6: bool) -> None:
    stamp = b"\x01\x01\x08\x0a" + bytes(8)
    for vnet in (False, True):
        head = tun_offload.frame(b"") if vnet else b""
        assert _carries_data(head + _tcp_packet(v6, b"request", flags=ACK | PSH), vnet)
        assert not _carries_data(head + _tcp_packet(v6, b"", options=stamp), vnet)
        assert not _carries_data(head + _tcp_packet(v6, b""), vnet)
        assert _carries_data(head + b"\x45garbage", vnet)  # too short to tell: stop reading
