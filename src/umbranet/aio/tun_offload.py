"""TUN segmentation offload: split the kernel's TCP super-packets, coalesce ours for it.

With IFF_VNET_HDR and TUNSETOFFLOAD (TSO4/TSO6 + CSUM) the kernel hands a TUN reader TCP
"super-packets" of up to 64 KiB with a virtio-net header in front, instead of one read per
MTU-sized segment; the checksum may be left partial (NEEDS_CSUM). WireGuard must still seal
each MTU-sized IP packet on its own (the peer may be wireguard-go or the kernel, which know
nothing of this), so `unpack` cuts a super-packet into ordinary segments, as the NIC would.
On the way in, `coalesce` does the reverse: consecutive in-order segments of one TCP flow
become one GSO write, so the kernel's TCP receiver handles one buffer per burst.

Why here and not in the sans-IO machine: this is about how one Linux device frames packets,
not about the WireGuard protocol; the machine sees plain IP packets either way.

Everything is pure functions over bytes. A frame `unpack` cannot trust (short header, unknown
GSO type, lengths that disagree with the IP header) is refused with a verdict code, counted in
the caller's counter, never raised: the kernel wrote it, but a bug there must not stop the
data plane. Checksums use the fact that a ones'-complement sum of 16-bit words equals the
big-endian integer of the bytes modulo 0xFFFF (2**16 == 1 mod 0xFFFF), so one C-level
`int.from_bytes` does what would otherwise be a Python loop per word.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Sequence

import numpy

__all__ = [
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "NEEDS_CSUM",
    "DATA_VALID",
    "VNET_HDR_LEN",
    "checksum",
    "coalesce",
    "frame",
    "unpack",
]

VNET_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size
NEEDS_CSUM = 1
DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_ECN = 0x80
_PROTO_TCP = 6
_FIN, _SYN, _RST, _PSH, _ACK, _URG, _ECE, _CWR = 1, 2, 4, 8, 16, 32, 64, 128
_MAX_SEGMENTS = 64
_MAX_GSO_BYTES = 65535
_MAX_SPLIT = 1024
_PLAIN_HEADER = VNET_HDR.pack(DATA_VALID, GSO_NONE, 0, 0, 0, 0)
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_IP_FIELDS = struct.Struct("!HH")  # IPv4 total length, identification


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of `data`, with `initial` (an unfolded sum) added."""
    total = int.from_bytes(data, "big")
    if len(data) & 1:
        total <<= 8  # pad the odd byte on the right, as the word sum does
    folded = (total + initial) % 0xFFFF
    return ~folded & 0xFFFF


def _pseudo_sum(packet: bytes | bytearray | memoryview, v6: bool, length: int) -> int:
    """The unfolded sum of the TCP pseudo-header for a TCP segment of `length` bytes."""
    addresses = packet[8:40] if v6 else packet[12:20]
    return int.from_bytes(addresses, "big") % 0xFFFF + _PROTO_TCP + length


def frame(packet: bytes) -> bytes:
    """A packet for a vnet-header TUN write: already authenticated by WireGuard's AEAD, so
    the kernel may skip verifying its checksum (as kernel WireGuard marks it)."""
    return _PLAIN_HEADER + packet


def unpack(data: bytes, refusals: Counter[str]) -> list[bytes]:
    """The IP packets in one vnet-header TUN read; [] (and a counted verdict) if refused."""
    if len(data) < VNET_HDR_LEN:
        refusals["vnet_short_header"] += 1
        return []
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(data)
    packet = memoryview(data)[VNET_HDR_LEN:]
    kind = gso_type & ~GSO_ECN
    if kind == GSO_NONE:
        if flags & NEEDS_CSUM:
            at = csum_start + csum_offset
            if csum_start >= len(packet) or at + 2 > len(packet):
                refusals["vnet_bad_csum_offsets"] += 1
                return []
            out = bytearray(packet)
            # the field holds the pseudo-header sum; the sum over the span completes it
            out[at : at + 2] = checksum(packet[csum_start:]).to_bytes(2, "big")
            return [bytes(out)]
        return [bytes(packet)]
    if kind not in (GSO_TCPV4, GSO_TCPV6):
        refusals["vnet_bad_gso_type"] += 1
        return []
    if gso_size == 0:
        refusals["vnet_bad_gso_size"] += 1
        return []
    segments = _split_tcp(packet, gso_size, kind == GSO_TCPV6)
    if isinstance(segments, str):
        refusals[segments] += 1
        return []
    return segments


def _ip_header_length(packet: memoryview | bytes, v6: bool) -> int | str:
    """The IP header length of a TCP packet we can segment, or a verdict."""
    if len(packet) < (40 if v6 else 20):
        return "vnet_bad_ip_header"
    version = packet[0] >> 4
    if v6:
        if version != 6 or packet[6] != _PROTO_TCP:
            return "vnet_bad_ip_header"
        if int.from_bytes(packet[4:6], "big") + 40 != len(packet):
            return "vnet_bad_ip_length"
        return 40
    ihl = (packet[0] & 0x0F) * 4
    if version != 4 or ihl < 20 or packet[9] != _PROTO_TCP or len(packet) < ihl:
        return "vnet_bad_ip_header"
    if int.from_bytes(packet[2:4], "big") != len(packet):
        return "vnet_bad_ip_length"
    if int.from_bytes(packet[6:8], "big") & 0x3FFF:
        return "vnet_bad_ip_header"  # a fragment cannot be a TSO packet
    return ihl


def _split_tcp(packet: memoryview, mss: int, v6: bool) -> list[bytes] | str:
    """Cut a TCP super-packet into segments of at most `mss` payload bytes, each with its own
    sequence number, lengths, IPv4 ID and complete checksums (the NIC's job in TSO)."""
    ihl = _ip_header_length(packet, v6)
    if isinstance(ihl, str):
        return ihl
    if len(packet) < ihl + 20:
        return "vnet_bad_tcp_header"
    thl = (packet[ihl + 12] >> 4) * 4
    if thl < 20 or len(packet) < ihl + thl:
        return "vnet_bad_tcp_header"
    hlen = ihl + thl
    payload = len(packet) - hlen
    if payload == 0:
        return [bytes(packet)]
    count = -(-payload // mss)
    if count > _MAX_SPLIT:
        return "vnet_bad_gso_size"  # an MSS no TCP would use: refuse the work
    head = bytearray(packet[:hlen])
    seq = int.from_bytes(head[ihl + 4 : ihl + 8], "big")
    flags = head[ihl + 13]
    ip_id = int.from_bytes(head[4:6], "big")
    pseudo = int.from_bytes(head[8:40] if v6 else head[12:20], "big") + _PROTO_TCP
    # Checksums by arithmetic: a ones'-complement sum is linear, and every field that
    # changes per segment starts on a 16-bit boundary from the header's end, so its bytes
    # add their integer value. Sum the unchanging bytes once (changing fields zeroed), then
    # add each segment's values: one big-integer pass per segment, over its payload only.
    _U32.pack_into(head, ihl + 4, 0)
    head[ihl + 13] = 0
    head[ihl + 16 : ihl + 18] = b"\0\0"
    tcp_base = (int.from_bytes(head[ihl:hlen], "big") + pseudo) % 0xFFFF
    ip_base = 0
    if not v6:
        head[2:6] = b"\0\0\0\0"
        head[10:12] = b"\0\0"
        ip_base = int.from_bytes(head[:ihl], "big") % 0xFFFF
    sums = _segment_sums(packet, hlen, mss, count)
    out: list[bytes] = []
    last = count - 1
    full_len = thl + mss
    for i in range(count):
        start = hlen + i * mss
        body = packet[start : start + mss]
        seg_len = full_len if i != last else thl + len(body)
        if v6:
            _U16.pack_into(head, 4, seg_len)
        else:
            ident = (ip_id + i) & 0xFFFF
            ip_sum = ~((ip_base + ihl + seg_len + ident) % 0xFFFF) & 0xFFFF
            _IP_FIELDS.pack_into(head, 2, ihl + seg_len, ident)
            _U16.pack_into(head, 10, ip_sum)
        seg_seq = (seq + i * mss) & 0xFFFFFFFF
        seg_flags = flags
        if i != last:
            seg_flags &= ~(_FIN | _PSH)
        if i:
            seg_flags &= ~_CWR
        _U32.pack_into(head, ihl + 4, seg_seq)
        head[ihl + 13] = seg_flags
        tcp_sum = ~((sums[i] + tcp_base + seg_len + seg_seq + seg_flags) % 0xFFFF) & 0xFFFF
        _U16.pack_into(head, ihl + 16, tcp_sum)
        out.append(bytes(head) + body)
    return out


def _segment_sums(packet: memoryview, hlen: int, mss: int, count: int) -> list[int]:
    """For each of the `count` payload segments of `mss` bytes after `hlen`, an integer
    congruent (mod 0xFFFF) to its ones'-complement word sum.

    The full segments are summed by numpy in one pass over the super-packet, as 16-bit
    big-endian words in rows of `mss` bytes: ten times cheaper than a big-integer
    conversion per segment, and this sum was the costliest step of sending a packet
    (`bench/l3_cpu.py`). An odd MSS (no TCP stack uses one) and the last segment take
    the big-integer way.
    """
    full = count if (len(packet) - hlen) % mss == 0 else count - 1
    sums: list[int] = []
    if full and not mss & 1:
        words = numpy.frombuffer(packet, dtype=">u2", count=full * mss // 2, offset=hlen)
        sums = words.reshape(full, mss // 2).sum(axis=1, dtype=numpy.uint64).tolist()
    for i in range(len(sums), count):
        body = packet[hlen + i * mss : hlen + (i + 1) * mss]
        value = int.from_bytes(body, "big")
        sums.append(value << 8 if len(body) & 1 else value)  # the odd byte pads on the right
    return sums


# (flow key, IP header length, header length, IPv6?, sequence number) of a mergeable segment
_Segment = tuple[bytes, int, int, bool, int]


class _Run:
    """Segments of one TCP flow that may leave as one GSO write."""

    __slots__ = (
        "bodies",
        "closed",
        "head",
        "hlen",
        "ihl",
        "mss",
        "next_seq",
        "shape",
        "size",
        "v6",
    )

    def __init__(self, packet: bytes, info: _Segment, shape: int) -> None:
        _, ihl, hlen, v6, seq = info
        self.head = packet[:hlen]
        self.shape = shape
        self.ihl = ihl
        self.hlen = hlen
        self.v6 = v6
        self.mss = len(packet) - hlen
        self.next_seq = (seq + self.mss) & 0xFFFFFFFF
        self.bodies = [packet[hlen:]]
        self.size = len(packet)
        self.closed = bool(packet[ihl + 13] & _PSH)

    def push(self) -> None:
        """The segment just taken had PSH: the merged write carries it."""
        head = bytearray(self.head)
        head[self.ihl + 13] |= _PSH
        self.head = bytes(head)

    def emit(self) -> bytes:
        if len(self.bodies) == 1:
            return _PLAIN_HEADER + self.head + self.bodies[0]
        ihl, hlen = self.ihl, self.hlen
        head = bytearray(self.head)
        tcp_len = self.size - ihl
        if self.v6:
            head[4:6] = tcp_len.to_bytes(2, "big")
        else:
            head[2:4] = self.size.to_bytes(2, "big")
            head[10:12] = b"\0\0"
            head[10:12] = checksum(head[:ihl]).to_bytes(2, "big")
        # partial checksum: the folded pseudo-header sum, which the kernel completes
        partial = _pseudo_sum(head, self.v6, tcp_len) % 0xFFFF
        head[ihl + 16 : ihl + 18] = partial.to_bytes(2, "big")
        vnet = VNET_HDR.pack(
            NEEDS_CSUM, GSO_TCPV6 if self.v6 else GSO_TCPV4, hlen, self.mss, ihl, 16
        )
        return b"".join([vnet, head, *self.bodies])


def _shape_mask(ihl: int, hlen: int) -> int:
    """A mask over a header of `hlen` bytes keeping what every segment of one GSO write
    shares: all but the lengths, the IPv4 ID and checksum, the sequence number, the TCP
    checksum and the PSH flag."""
    mask = bytearray(b"\xff" * hlen)
    changing = [(ihl + 4, ihl + 8), (ihl + 16, ihl + 18)]
    changing += [(4, 6)] if ihl == 40 else [(2, 6), (10, 12)]
    for start, end in changing:
        mask[start:end] = bytes(end - start)
    mask[ihl + 13] &= ~_PSH
    return int.from_bytes(mask, "big")


_MASKS = {
    (ihl, ihl + extra): _shape_mask(ihl, ihl + extra)
    for ihl in (20, 40)
    for extra in range(20, 61, 4)
}
# total length, fragment field, protocol, addresses and ports, sequence number,
# data offset, flags of an IPv4 (no options) + TCP header
_V4_TCP = struct.Struct("!2xH2xHxB2x12sI4xBB")


def _coalescable(packet: bytes) -> _Segment | None:
    """(flow key, IP header length, header length, IPv6?, seq) of a TCP segment that may
    join a GSO write: data-carrying, only ACK (and PSH) set, IPv4 without options."""
    if len(packet) < 40:
        return None
    if packet[0] == 0x45:
        total, frag, proto, key, seq, offset, flags = _V4_TCP.unpack_from(packet)
        if proto != _PROTO_TCP or frag & 0xBFFF or total != len(packet):
            return None
        ihl, v6 = 20, False
    elif packet[0] >> 4 == 6:
        if len(packet) < 60 or packet[6] != _PROTO_TCP:
            return None
        if int.from_bytes(packet[4:6], "big") + 40 != len(packet):
            return None
        ihl, v6 = 40, True
        key = packet[8:44]
        seq = int.from_bytes(packet[44:48], "big")
        offset, flags = packet[52], packet[53]
    else:
        return None
    if flags & ~_PSH != _ACK:
        return None
    hlen = ihl + (offset >> 4) * 4
    if hlen < ihl + 20 or len(packet) <= hlen:
        return None
    return key, ihl, hlen, v6, seq


def coalesce(packets: Sequence[bytes], counters: Counter[str] | None = None) -> list[bytes]:
    """vnet-header frames for `packets`: in-order TCP segments of one flow merged into GSO
    writes, every other packet on its own. Order within each flow is kept.

    A segment continues its flow's run if its header has the run's shape (`_shape_mask`: one
    big-integer AND and compare rather than a slice compare per field), its sequence number
    is the next expected, it is no longer than the first, and the write stays within the
    kernel's limits; a short or pushed segment ends the run."""
    frames: list[bytes] = []
    runs: dict[bytes, _Run] = {}
    merged = 0
    for packet in packets:
        info = _coalescable(packet)
        if info is None:
            frames.append(_PLAIN_HEADER + packet)
            continue
        key, ihl, hlen, _, seq = info
        shape = int.from_bytes(packet[:hlen], "big") & _MASKS[ihl, hlen]
        run = runs.get(key)
        if run is not None:
            body = len(packet) - hlen
            if (
                not run.closed
                and seq == run.next_seq
                and shape == run.shape
                and body <= run.mss
                and len(run.bodies) < _MAX_SEGMENTS
                and run.size + body <= _MAX_GSO_BYTES
            ):
                run.bodies.append(packet[hlen:])
                run.size += body
                run.next_seq = (seq + body) & 0xFFFFFFFF
                pushed = packet[ihl + 13] & _PSH
                if pushed or body < run.mss:
                    run.closed = True  # a short or pushed segment ends a burst
                    if pushed:
                        run.push()
                continue
            frames.append(run.emit())
            merged += len(run.bodies) > 1
        runs[key] = _Run(packet, info, shape)
    for run in runs.values():
        frames.append(run.emit())
        merged += len(run.bodies) > 1
    if counters is not None and merged:
        counters["tun_gro_writes"] += merged
    return frames
