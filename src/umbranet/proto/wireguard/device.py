"""A WireGuard device as a sans-IO machine: one static key, many peers, no sockets, no clock.

Inputs:  `handle_datagram(data, addr, now)` for every UDP datagram received (or
         `handle_datagrams(datagrams, addr, now)` for a burst from one address),
         `send_packet(ip_packet, now)` for every IP packet to send, routed by allowed IPs
         (or `send_packets(packets, now)` for a burst),
         `handle_timeout(now)` when `poll_timeout()` says so.
Outputs: `poll_transmit() -> (datagram, addr) | None` (or `take_transmit()`: all of them),
         `poll_event() -> Event | None`, `poll_timeout() -> Deadline | None`.

Rules of this file:
- Nothing raises on bad input. Every datagram that is not used is counted in
  `statistics()["drops"]` by a reason string (`bad_type`, `bad_length`, `bad_mac1`,
  `unknown_peer`, `unknown_index`, `replayed_initiation`, `initiation_flood`, `rate_limited`,
  `replayed_data`, `decrypt_failed`, `expired_key`, `source_not_allowed`, ...).
- Work is proportional to trust: a handshake message's MAC1 is checked before any
  Diffie-Hellman; under load, its MAC2 (a cookie bound to the sender's address) too, and a
  sender without one gets a cookie reply instead of a handshake; one with it is still held to
  a per-source rate (`ratelimit.py`). A data packet's counter is
  checked against the replay window before decryption and recorded only after it.
- Sessions follow the reference implementations (see `peer.py`): the initiator sends on a
  new session as soon as the response arrives; the responder only after the initiator's first
  data packet under it. Timers and their constants are in `timers.py`.
- `now` is an `Instant`: `mono` for every timer, `wall` only for the TAI64N timestamp of
  initiations (the responder's replay check of initiations compares those).
- Randomness (ephemeral keys, indices, cookie secrets and nonces, and the seed of the timers'
  jitter) comes from one injected `random_bytes(n)`, `os.urandom` by default, so tests can
  fix every byte.
"""

from __future__ import annotations

import os
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable

from umbranet.clock import Deadline, Instant, deadline
from umbranet.proto.wireguard.config import DeviceConfig, NoiseIdentity
from umbranet.proto.wireguard.cookie import CookieChecker, CookieGenerator, address_bytes
from umbranet.proto.wireguard.crypto import tai64n
from umbranet.proto.wireguard.events import Event, HandshakeCompleted, PeerSilent
from umbranet.proto.wireguard.handshake import (
    HandshakeError,
    StaticKey,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from umbranet.proto.wireguard.ip import AllowedIps, IpNetwork
from umbranet.proto.wireguard.messages import (
    COOKIE_REPLY_LEN,
    DATA_MIN_LEN,
    INITIATION_LEN,
    RESPONSE_LEN,
    TYPE_COOKIE_REPLY,
    TYPE_DATA,
    TYPE_INITIATION,
    TYPE_RESPONSE,
    message_type,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
)
from umbranet.proto.wireguard.peer import Address, Keypair, Peer
from umbranet.proto.wireguard.ratelimit import HandshakeRateLimiter, source_key
from umbranet.proto.wireguard.timers import (
    INITIATIONS_MIN_INTERVAL,
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER,
    TIMER_NAMES,
    UNDER_LOAD_AFTER,
)
from umbranet.proto.wireguard.transport import TransportData

__all__ = ["Device"]

_TIMER_REASONS = {name: f"wireguard {name}" for name in TIMER_NAMES}


class Device(TransportData):
    """A WireGuard interface's protocol state. See the module docstring for the rules."""

    def __init__(
        self,
        private_key: bytes,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        config: DeviceConfig | None = None,
    ) -> None:
        self._static = StaticKey(private_key)
        self.public_key = self._static.public
        self._random = random_bytes
        # Timer jitter needs no secrecy: a seeded PRNG, drawn from `random_bytes` once, rather
        # than a getrandom(2) call on every send after a receive (a round trip's worth).
        self._jitter_source = random.Random(int.from_bytes(random_bytes(8), "little"))
        self._config = config or DeviceConfig()
        self._checker = CookieChecker(self.public_key, random_bytes)
        self._limiter = HandshakeRateLimiter()
        self._peers: dict[bytes, Peer] = {}
        self._routes: AllowedIps[Peer] = AllowedIps()
        # receiver index -> (peer, keypair); keypair None while it names a pending handshake
        self._indices: dict[int, tuple[Peer, Keypair | None]] = {}
        self._transmit: deque[tuple[bytes, Address]] = deque()
        self._events: deque[Event] = deque()
        self._drops: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._load_window = 0.0
        self._load_count = 0
        self._under_load_until: float | None = None
        # (peer key, source, mono time) of the newest datagram that passed authentication:
        # what a path manager takes as proof that a path works (`umbranet.proto.paths`).
        self.last_authenticated: tuple[bytes, Address, float] | None = None

    @classmethod
    def for_identity(
        cls,
        identity: NoiseIdentity,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        config: DeviceConfig | None = None,
    ) -> Device:
        """A device keyed by the identity's X25519 Noise key, the one its SVID binds, so the
        public key peers configure is the one the controller already vouches for."""
        return cls(identity.noise_private_key, random_bytes=random_bytes, config=config)

    # -- configuration -------------------------------------------------------------------

    def add_peer(
        self,
        public: bytes,
        *,
        endpoint: Address | None = None,
        allowed_ips: Iterable[str | IpNetwork] = (),
        preshared_key: bytes | None = None,
        persistent_keepalive: float | None = None,
    ) -> None:
        """Add (or reconfigure) a peer, as `wg set wg0 peer KEY ...` does."""
        if len(public) != 32:
            raise ValueError("a peer's public key is 32 bytes")
        peer = self._peers.get(public)
        if peer is None:
            peer = Peer(public_key=public, cookies=CookieGenerator(public))
            self._peers[public] = peer
            self._static.remember(public)
        if endpoint is not None:
            peer.endpoint = endpoint
        peer.preshared_key = preshared_key
        peer.persistent_keepalive = persistent_keepalive
        self._routes.add(allowed_ips, peer)

    def remove_peer(self, public: bytes) -> None:
        """Forget a peer and every session with it (a revoked identity)."""
        peer = self._peers.pop(public, None)
        if peer is None:
            return
        self._routes.remove_owner(peer)
        self._static.forget(public)
        self._forget_sessions(peer)

    def peers(self) -> list[bytes]:
        return list(self._peers)

    def endpoint_of(self, public: bytes) -> Address | None:
        peer = self._peers.get(public)
        return None if peer is None else peer.endpoint

    # -- inputs --------------------------------------------------------------------------

    def send_to(self, public: bytes, packet: bytes, now: Instant) -> None:
        """Send a packet to one peer, whatever its destination (for relays and tests)."""
        peer = self._peers.get(public)
        if peer is None:
            self._drops["tx_unknown_peer"] += 1
            return
        self._stage(peer, packet)
        self._send_staged(peer, now.mono, now)

    def initiate(self, public: bytes, now: Instant) -> None:
        """Start a handshake with a peer now (otherwise the first packet to it does)."""
        peer = self._peers.get(public)
        if peer is not None:
            self._initiate(peer, now, retry=False)

    def handle_datagram(self, data: bytes, addr: Address, now: Instant) -> None:
        """One UDP datagram from `addr`. Never raises; what is not used is counted."""
        kind = message_type(data)
        if kind == TYPE_DATA:
            if len(data) < DATA_MIN_LEN:
                self._drops["bad_length"] += 1
            else:
                self._data(data, addr, now)
        elif kind in (TYPE_INITIATION, TYPE_RESPONSE):
            if len(data) != (INITIATION_LEN if kind == TYPE_INITIATION else RESPONSE_LEN):
                self._drops["bad_length"] += 1
            elif self._admit_handshake(data, addr, now.mono):
                if kind == TYPE_INITIATION:
                    self._initiation(data, addr, now)
                else:
                    self._response(data, addr, now)
        elif kind == TYPE_COOKIE_REPLY:
            if len(data) != COOKIE_REPLY_LEN:
                self._drops["bad_length"] += 1
            else:
                self._cookie_reply(data, now.mono)
        else:
            self._drops["bad_type"] += 1

    def handle_timeout(self, now: Instant) -> None:
        """Run every per-peer timer that is due."""
        t = now.mono
        for peer in list(self._peers.values()):
            for name in TIMER_NAMES:
                at = peer.timers.get(name)
                if at is not None and at <= t:
                    del peer.timers[name]
                    self._expire(peer, name, now)

    # -- outputs -------------------------------------------------------------------------

    def poll_transmit(self) -> tuple[bytes, Address] | None:
        return self._transmit.popleft() if self._transmit else None

    def take_transmit(self) -> list[tuple[bytes, Address]]:
        """Every queued datagram at once, oldest first."""
        out = list(self._transmit)
        self._transmit.clear()
        return out

    def poll_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def poll_timeout(self) -> Deadline | None:
        # Asked after every packet: no string is formatted and no named tuple built in Python.
        best: tuple[float, str] | None = None
        for peer in self._peers.values():
            for name, at in peer.timers.items():
                if best is None or at < best[0]:
                    best = (at, name)
        return None if best is None else deadline((best[0], _TIMER_REASONS[best[1]]))

    def under_load(self, now: float) -> bool:
        return self._under_load_until is not None and now < self._under_load_until

    def statistics(self) -> dict[str, object]:
        """Counters by name, drops by reason, and per-peer figures (keys as hex)."""
        return {
            "peers": len(self._peers),
            "under_load_until": self._under_load_until,
            "counts": dict(self._counts),
            "drops": dict(self._drops),
            "per_peer": {
                peer.public_key.hex(): {
                    "rx_bytes": peer.rx_bytes,
                    "tx_bytes": peer.tx_bytes,
                    "last_handshake": peer.last_handshake_wall,
                    "endpoint": peer.endpoint,
                    "sessions": len(peer.keypairs()),
                }
                for peer in self._peers.values()
            },
        }

    # -- sending -------------------------------------------------------------------------

    def _initiate(self, peer: Peer, now: Instant, *, retry: bool) -> None:
        t = now.mono
        if not retry:
            peer.handshake_attempts = 0
        last = peer.last_initiation_sent
        if last is not None and 0 <= t - last < REKEY_TIMEOUT:
            # One initiation per REKEY_TIMEOUT. Unlike the reference implementations, which
            # wait for the next packet to try again, make sure a try is due when the pause
            # ends, so a packet staged now is not held until some later send.
            peer.timers.setdefault("retransmit_handshake", last + REKEY_TIMEOUT)
            return
        if peer.endpoint is None:
            self._drops["tx_no_endpoint"] += 1
            return
        if peer.handshake_index is not None:
            self._indices.pop(peer.handshake_index, None)
        index = self._new_index(peer, None)
        body, state = create_initiation(
            self._static, peer.public_key, self._random(32), index, tai64n(now.wall)
        )
        peer.handshake = state
        peer.handshake_index = index
        peer.last_initiation_sent = t
        message = peer.cookies.add_macs(body, t)
        self._counts["tx_initiations"] += 1
        self._transmit.append((message, peer.endpoint))
        self._sent_authenticated(peer, t)
        peer.timers["retransmit_handshake"] = t + REKEY_TIMEOUT + self._jitter()

    # -- receiving -----------------------------------------------------------------------

    def _admit_handshake(self, data: bytes, addr: Address, t: float) -> bool:
        if not self._checker.check_mac1(data):
            self._drops["bad_mac1"] += 1
            return False
        if t - self._load_window >= 1.0 or t < self._load_window:
            self._load_window, self._load_count = t, 0
        self._load_count += 1
        if self._load_count > self._config.handshake_load_threshold:
            self._under_load_until = t + UNDER_LOAD_AFTER
        if not self.under_load(t):
            return True
        source = address_bytes(addr)
        if self._checker.check_mac2(data, source, t):
            if self._limiter.allow(source_key(addr[0]), t):
                return True
            self._drops["rate_limited"] += 1
            return False
        sender = int.from_bytes(data[4:8], "little")
        self._transmit.append((self._checker.create_reply(data, sender, source, t), addr))
        self._counts["tx_cookie_replies"] += 1
        self._drops["under_load_no_cookie"] += 1
        return False

    def _initiation(self, data: bytes, addr: Address, now: Instant) -> None:
        t = now.mono
        try:
            consumed = consume_initiation(self._static, parse_initiation(data))
        except HandshakeError as exc:
            self._drops[exc.reason] += 1
            return
        peer = self._peers.get(consumed.peer_public)
        if peer is None:
            self._drops["unknown_peer"] += 1
            return
        if consumed.timestamp <= peer.latest_timestamp:
            self._drops["replayed_initiation"] += 1
            return
        last = peer.last_initiation_consumed
        if last is not None and 0 <= t - last < INITIATIONS_MIN_INTERVAL:
            self._drops["initiation_flood"] += 1
            return
        index = self._new_index(peer, None)
        try:
            body, keys = create_response(consumed, peer.preshared_key, self._random(32), index)
        except HandshakeError as exc:
            self._indices.pop(index, None)
            self._drops[exc.reason] += 1
            return
        peer.latest_timestamp = consumed.timestamp
        peer.last_initiation_consumed = t
        peer.endpoint = addr
        keypair = Keypair(keys, t, index, consumed.sender)
        self._indices[index] = (peer, keypair)
        # A responder's session waits in `next` until the initiator uses it.
        for old in (peer.next, peer.previous):
            if old is not None:
                self._indices.pop(old.local_index, None)
        peer.next, peer.previous = keypair, None
        self._counts["rx_initiations"] += 1
        self._received_authenticated(peer, addr, t)
        self._transmit.append((peer.cookies.add_macs(body, t), addr))
        self._counts["tx_responses"] += 1
        self._sent_authenticated(peer, t)
        peer.timers["zero_keys"] = t + 3 * REJECT_AFTER_TIME

    def _response(self, data: bytes, addr: Address, now: Instant) -> None:
        t = now.mono
        message = parse_response(data)
        entry = self._indices.get(message.receiver)
        if entry is None or entry[1] is not None or entry[0].handshake is None:
            self._drops["unknown_index"] += 1
            return
        peer = entry[0]
        assert peer.handshake is not None
        try:
            keys = consume_response(peer.handshake, self._static, peer.preshared_key, message)
        except HandshakeError as exc:
            self._drops[exc.reason] += 1
            return
        peer.handshake = None
        peer.handshake_index = None
        peer.endpoint = addr
        keypair = Keypair(keys, t, message.receiver, message.sender)
        self._indices[message.receiver] = (peer, keypair)
        self._install_initiator_session(peer, keypair)
        self._counts["rx_responses"] += 1
        self._handshake_done(peer, now, initiator=True)
        self._received_authenticated(peer, addr, t)
        self._send_keepalive(peer, now)

    def _install_initiator_session(self, peer: Peer, keypair: Keypair) -> None:
        if peer.next is not None:
            old_previous, peer.previous, peer.next = peer.previous, peer.next, None
            if peer.current is not None:
                self._indices.pop(peer.current.local_index, None)
        else:
            old_previous, peer.previous = peer.previous, peer.current
        if old_previous is not None:
            self._indices.pop(old_previous.local_index, None)
        peer.current = keypair

    def _handshake_done(self, peer: Peer, now: Instant, *, initiator: bool) -> None:
        t = now.mono
        peer.timers.pop("retransmit_handshake", None)
        peer.handshake_attempts = 0
        peer.sent_last_minute_handshake = False
        peer.last_handshake_wall = now.unix
        peer.timers["zero_keys"] = t + 3 * REJECT_AFTER_TIME
        self._counts["handshakes_completed"] += 1
        self._events.append(HandshakeCompleted(peer.public_key, initiator))

    def _cookie_reply(self, data: bytes, t: float) -> None:
        entry = self._indices.get(parse_cookie_reply(data).receiver)
        if entry is None:
            self._drops["unknown_index"] += 1
            return
        if not entry[0].cookies.consume_reply(data, t):
            self._drops["bad_cookie_reply"] += 1
            return
        self._counts["rx_cookie_replies"] += 1

    # -- timers --------------------------------------------------------------------------

    def _expire(self, peer: Peer, name: str, now: Instant) -> None:
        t = now.mono
        if name == "retransmit_handshake":
            if peer.handshake_attempts >= MAX_TIMER_HANDSHAKES:
                dropped = len(peer.staged)
                peer.staged.clear()
                if dropped:
                    self._drops["handshake_gave_up"] += dropped
                peer.timers.pop("send_keepalive", None)
                peer.timers.setdefault("zero_keys", t + 3 * REJECT_AFTER_TIME)
                self._counts["peers_silent"] += 1
                self._events.append(PeerSilent(peer.public_key, "handshake_timeout"))
                return
            peer.handshake_attempts += 1
            self._initiate(peer, now, retry=True)
        elif name == "send_keepalive":
            self._send_keepalive(peer, now)
            if peer.need_another_keepalive:
                peer.need_another_keepalive = False
                peer.timers["send_keepalive"] = t + KEEPALIVE_TIMEOUT
        elif name == "new_handshake":
            self._counts["rehandshakes_no_reply"] += 1
            self._initiate(peer, now, retry=False)
        elif name == "zero_keys":
            self._forget_sessions(peer)
        elif name == "persistent_keepalive":
            self._send_keepalive(peer, now)

    def _forget_sessions(self, peer: Peer) -> None:
        for keypair in peer.keypairs():
            self._indices.pop(keypair.local_index, None)
        if peer.handshake_index is not None:
            self._indices.pop(peer.handshake_index, None)
        peer.current = peer.previous = peer.next = None
        peer.handshake = None
        peer.handshake_index = None

    # -- helpers -------------------------------------------------------------------------

    def _new_index(self, peer: Peer, keypair: Keypair | None) -> int:
        while True:
            index = int.from_bytes(self._random(4), "little")
            if index not in self._indices:
                self._indices[index] = (peer, keypair)
                return index

    def _jitter(self) -> float:
        return self._jitter_source.random() * REKEY_TIMEOUT_JITTER
