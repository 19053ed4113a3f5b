"""Transport data messages: the half of `Device` every IP packet crosses.

Sending routes a packet by its destination (cryptokey routing), stages it on the peer and
seals what is staged once a session is usable; receiving opens a datagram under the session
its receiver index names, after the replay window agreed, and delivers the packet if the
peer may use its source address.

Both directions come in a batch form, because network mode moves packets in bursts (a TUN
super-packet cut into 40 segments, a UDP GRO read of 40 datagrams) and per-packet Python
calls were the data plane's largest cost (`bench/l3_cpu.py`):
- `send_packets` looks up a destination once per run of packets to it and seals a peer's
  staged packets in one loop;
- `handle_datagrams` gives the first datagram of a run under one session the whole
  treatment (session switch, timers, last-minute rehandshake) and the rest only what changes
  per datagram: the replay window, the AEAD, the source check (a memoised lookup).
The batch forms count, drop and deliver exactly as the same datagrams one by one would.

Delivered packets of one peer collect in one `PacketsReceived` event until it is polled, so
an owner filters and writes them as one batch.
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag

from umbranet.clock import Instant
from umbranet.proto.wireguard.events import Event, PacketsReceived
from umbranet.proto.wireguard.ip import AllowedIps
from umbranet.proto.wireguard.messages import DATA_MIN_LEN, TYPE_DATA
from umbranet.proto.wireguard.peer import Address, Keypair, Peer
from umbranet.proto.wireguard.timers import (
    KEEPALIVE_TIMEOUT,
    MAX_STAGED_PACKETS,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
)

__all__ = ["TransportData"]

_HEADER = struct.Struct("<IIQ")  # type word, receiver index, counter
_NONCE = struct.Struct("<4xQ")  # 32 zero bits, then the counter
_PADDING = bytes(16)
_LAST_MINUTE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT


class TransportData:
    """Sealing and opening transport data; `Device` adds handshakes, timers and peers."""

    _routes: AllowedIps[Peer]
    _indices: dict[int, tuple[Peer, Keypair | None]]
    _transmit: deque[tuple[bytes, Address]]
    _events: deque[Event]
    _drops: Counter[str]
    _counts: Counter[str]
    last_authenticated: tuple[bytes, Address, float] | None

    # -- what `Device` provides ---------------------------------------------------------

    def _initiate(self, peer: Peer, now: Instant, *, retry: bool) -> None:
        raise NotImplementedError

    def _handshake_done(self, peer: Peer, now: Instant, *, initiator: bool) -> None:
        raise NotImplementedError

    def _jitter(self) -> float:
        raise NotImplementedError

    # -- sending ------------------------------------------------------------------------

    def send_packet(self, packet: bytes, now: Instant) -> None:
        """Send an IP packet to the peer whose allowed IPs hold its destination."""
        self.send_packets((packet,), now)

    def send_packets(self, packets: Iterable[bytes], now: Instant) -> None:
        """Send IP packets, each to the peer whose allowed IPs hold its destination; a run
        of packets to one destination is routed once and sealed in one loop per peer."""
        routed: list[Peer] = []
        last_dst = b""
        peer: Peer | None = None
        drops = self._drops
        for packet in packets:
            dst = _destination(packet)
            if dst is None:
                drops["tx_not_ip"] += 1
                continue
            if dst != last_dst or peer is None:
                peer = self._routes.owner_of(dst)
                if peer is None:
                    drops["tx_no_route"] += 1
                    continue
                last_dst = dst
                if peer not in routed:
                    routed.append(peer)
            staged = peer.staged
            if len(staged) >= MAX_STAGED_PACKETS:
                self._send_staged(peer, now.mono, now)  # what one by one would have sent
                if len(staged) >= MAX_STAGED_PACKETS:
                    staged.popleft()
                    drops["staged_overflow"] += 1
            staged.append(packet)
        for peer in routed:
            self._send_staged(peer, now.mono, now)

    def _stage(self, peer: Peer, packet: bytes) -> None:
        if len(peer.staged) >= MAX_STAGED_PACKETS:
            peer.staged.popleft()
            self._drops["staged_overflow"] += 1
        peer.staged.append(packet)

    def _send_staged(self, peer: Peer, t: float, now: Instant) -> None:
        keypair = peer.current
        if keypair is None or not keypair.usable_for_sending(t):
            self._initiate(peer, now, retry=False)
            return
        endpoint = peer.endpoint
        if endpoint is None:
            self._drops["tx_no_endpoint"] += len(peer.staged)
            peer.staged.clear()
            return
        staged = peer.staged
        encrypt = keypair.sealer.encrypt
        header = _HEADER.pack
        nonce = _NONCE.pack
        remote = keypair.remote_index
        counter = keypair.send_counter
        limit = REJECT_AFTER_MESSAGES - counter
        transmit = self._transmit
        packets = keepalives = sent_bytes = 0
        while staged and packets + keepalives < limit:  # the rest wait for a new session
            packet = staged.popleft()
            if packet:
                packets += 1
                pad = -len(packet) & 15
                if pad:
                    packet += _PADDING[:pad]
            else:
                keepalives += 1
            datagram = header(TYPE_DATA, remote, counter) + encrypt(nonce(counter), packet, None)
            counter += 1
            sent_bytes += len(datagram)
            transmit.append((datagram, endpoint))
        keypair.send_counter = counter
        peer.tx_bytes += sent_bytes
        if packets:
            self._counts["tx_packets"] += packets
        if keepalives:
            self._counts["tx_keepalives"] += keepalives
        self._sent_authenticated(peer, t)
        if packets and "new_handshake" not in peer.timers:
            peer.timers["new_handshake"] = t + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter()
        if counter > REKEY_AFTER_MESSAGES or (
            t - keypair.created > REKEY_AFTER_TIME and keypair.initiator
        ):
            self._initiate(peer, now, retry=False)

    def _send_keepalive(self, peer: Peer, now: Instant) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now.mono, now)

    def _sent_authenticated(self, peer: Peer, t: float) -> None:
        peer.timers.pop("send_keepalive", None)
        if peer.persistent_keepalive:
            peer.timers["persistent_keepalive"] = t + peer.persistent_keepalive

    # -- receiving ----------------------------------------------------------------------

    def _received_authenticated(self, peer: Peer, addr: Address, t: float) -> None:
        self.last_authenticated = (peer.public_key, addr, t)
        peer.timers.pop("new_handshake", None)
        if peer.persistent_keepalive:
            peer.timers["persistent_keepalive"] = t + peer.persistent_keepalive

    def handle_datagram(self, data: bytes, addr: Address, now: Instant) -> None:
        raise NotImplementedError

    def handle_datagrams(self, datagrams: Iterable[bytes], addr: Address, now: Instant) -> None:
        """Datagrams from one address (a UDP GRO read), as `handle_datagram` each; a run of
        transport data under one session is opened in one loop (see the module docstring).
        Any other message ends the run: a handshake may retire the session."""
        t = now.mono
        drops = self._drops
        unpack = _HEADER.unpack_from
        index = -1
        keypair: Keypair | None = None
        peer: Peer | None = None
        for data in datagrams:
            if len(data) < DATA_MIN_LEN:
                self.handle_datagram(data, addr, now)
                index = -1
                continue
            kind, receiver, counter = unpack(data)
            if kind != TYPE_DATA:
                self.handle_datagram(data, addr, now)
                index = -1
                continue
            if receiver != index or keypair is None or peer is None:
                found = self._data(data, addr, now)
                index = -1 if found is None else receiver
                if found is not None:
                    peer, keypair = found
                continue
            replay = keypair.replay
            if not replay.check(counter):
                drops["replayed_data"] += 1
                continue
            try:
                plaintext = keypair.opener.decrypt(_NONCE.pack(counter), data[16:], None)
            except InvalidTag:
                drops["decrypt_failed"] += 1
                continue
            replay.record(counter)
            peer.rx_bytes += len(data)
            if plaintext:
                self._deliver(peer, plaintext, t)
            else:
                self._counts["rx_keepalives"] += 1

    def _data(self, data: bytes, addr: Address, now: Instant) -> tuple[Peer, Keypair] | None:
        """One transport data message; (peer, session) if it was authentic, for a batch to
        open the datagrams after it under the same session."""
        t = now.mono
        _, receiver, counter = _HEADER.unpack_from(data)
        entry = self._indices.get(receiver)
        keypair = None if entry is None else entry[1]
        if entry is None or keypair is None:
            self._drops["unknown_index"] += 1
            return None
        peer = entry[0]
        if keypair.expired(t):
            self._drops["expired_key"] += 1
            return None
        if not keypair.replay.check(counter):
            self._drops["replayed_data"] += 1
            return None
        try:
            plaintext = keypair.opener.decrypt(_NONCE.pack(counter), data[16:], None)
        except InvalidTag:
            self._drops["decrypt_failed"] += 1
            return None
        keypair.replay.record(counter)
        peer.rx_bytes += len(data)
        if keypair is peer.next:
            old_previous, peer.previous, peer.current = peer.previous, peer.current, keypair
            peer.next = None
            if old_previous is not None:
                self._indices.pop(old_previous.local_index, None)
            self._handshake_done(peer, now, initiator=False)
            peer.endpoint = addr  # before sending what waited for this session
            if peer.staged:
                self._send_staged(peer, t, now)
        peer.endpoint = addr
        self._received_authenticated(peer, addr, t)
        if (
            peer.current is keypair
            and keypair.initiator
            and not peer.sent_last_minute_handshake
            and t - keypair.created > _LAST_MINUTE
        ):
            peer.sent_last_minute_handshake = True
            self._initiate(peer, now, retry=False)
        if plaintext:
            self._deliver(peer, plaintext, t)
        else:
            self._counts["rx_keepalives"] += 1
        return peer, keypair

    def _deliver(self, peer: Peer, plaintext: bytes, t: float) -> None:
        """Queue a decrypted packet if it is IP and its source is one `peer` may use."""
        fields = _inner(plaintext)
        if fields is None:
            self._drops["rx_not_ip"] += 1
            return
        src, total = fields
        if self._routes.owner_of(src) is not peer:
            self._drops["source_not_allowed"] += 1
            return
        self._counts["rx_packets"] += 1
        timers = peer.timers
        if "send_keepalive" in timers:
            peer.need_another_keepalive = True
        else:
            timers["send_keepalive"] = t + KEEPALIVE_TIMEOUT
        packet = plaintext if total == len(plaintext) else plaintext[:total]
        events = self._events
        last = events[-1] if events else None
        if type(last) is PacketsReceived and last.peer == peer.public_key:
            last.packets.append(packet)
        else:
            events.append(PacketsReceived(peer.public_key, [packet]))


def _destination(packet: bytes) -> bytes | None:
    """The destination address bytes of an IP packet `packet_fields` accepts, else None."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20 or not 20 <= (packet[2] << 8 | packet[3]) <= len(packet):
            return None
        return packet[16:20]
    if version == 6:
        if len(packet) < 40 or 40 + (packet[4] << 8 | packet[5]) > len(packet):
            return None
        return packet[24:40]
    return None


def _inner(packet: bytes) -> tuple[bytes, int] | None:
    """(source address bytes, total length) of a decrypted IPv4 or IPv6 packet, or None."""
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            return None
        total = packet[2] << 8 | packet[3]
        if total < 20 or total > len(packet):
            return None
        return packet[12:16], total
    if version == 6:
        if len(packet) < 40:
            return None
        total = 40 + (packet[4] << 8 | packet[5])
        if total > len(packet):
            return None
        return packet[8:24], total
    return None
