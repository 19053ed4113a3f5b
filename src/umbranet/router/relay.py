"""The router's WireGuard relay (network mode, DERP-like), sans-IO.

When two devices cannot reach each other over UDP, each sends its sealed WireGuard datagrams
to a router over the mutual-TLS link it already holds, addressed to the other's public key;
the router hands them to the link whose certificate binds that key. The router sees
ciphertext only: WireGuard seals end to end, and the router holds no WireGuard key.

    endpoint A ──WG_DATAGRAM(key B, sealed)──► router ──WG_DATAGRAM(key A, sealed)──► endpoint B

Rules of this file:
- A link's key is the X25519 key bound in its SVID (`noise_public_key_of`), never a claim in
  a frame; towards the destination the router writes the *source link's* key, so a device
  cannot pose as another. A link becomes a destination only once it spoke the relay (sent a
  WG_RELAY_ALLOW, whatever its verdict): a device's other links to the router (the SDK's,
  for streams) share its key but would not understand relayed datagrams.
- A datagram is relayed only for a pair the controller allowed: the source link presented
  (WG_RELAY_ALLOW) a relay ticket naming it (``sub``, and ``cnf`` bound to the link's
  certificate key) and the destination key (``svc`` = `relay_service(key)`), checked by the
  same `TicketGate` as dial tickets (cached successes, rate-limited full checks). The
  allowance lasts until the ticket expires or a newer revocation epoch is adopted
  (``ticket_stale`` then: the device re-presents fresh tickets after its own refresh).
- Datagrams are unreliable: a refused one is dropped and counted under its code
  (``relay_not_allowed``, ``relay_unknown_peer``, ``relay_queue_full``,
  ``relay_bad_datagram``, ``relay_oversized``, ``relay_no_source_key``), never a reason to
  close a link. A refused WG_RELAY_ALLOW is answered with WG_RELAY_ERR (code, reason, peer).
- Across two routers (the destination key's link is at a neighbouring router): see
  `router.relay_mesh`; the source's ticket goes with its first datagram and the neighbour
  checks it again.
- Bounded: at most `MAX_ALLOWANCES` destination keys per link (the oldest is forgotten), and
  nothing is queued here: a datagram for a destination whose link is congested (its writes
  paused: `congested(link)`) is dropped (``relay_queue_full``), as a full UDP buffer would.
"""

from __future__ import annotations

import binascii
from collections import Counter
from collections.abc import Callable

from umbranet.clock import Instant
from umbranet.pki.tickets import Action, relay_service
from umbranet.router.gate import TicketGate
from umbranet.router.links import LinkKind, SwitchLink
from umbranet.router.relay_mesh import MeshDirectory, parse_keys
from umbranet.wire import ErrorCode, Frame, FrameType, WireError, decode_control
from umbranet.wire.control import encode_control
from umbranet.wire.frames import MAX_WG_DATAGRAM, WG_KEY_SIZE, encode_header

__all__ = ["MAX_ALLOWANCES", "WgRelay"]

MAX_ALLOWANCES = 1024
_DATAGRAM = int(FrameType.WG_DATAGRAM)


class WgRelay:
    """Key-addressed relay of sealed WireGuard datagrams between endpoint links."""

    def __init__(
        self,
        gate: TicketGate,
        counters: Counter[str],
        dirty: set[SwitchLink],
        count: Callable[[str, SwitchLink, str], None],
    ) -> None:
        self._gate = gate
        self._counters = counters
        self._dirty = dirty  # the switch's links written to since its last poll_transmit
        self._count = count
        self.congested: Callable[[SwitchLink], bool] = lambda link: False
        # key -> its links, newest last (a device reconnecting before its old link timed out)
        self._by_key: dict[bytes, list[SwitchLink]] = {}
        self._key_of: dict[SwitchLink, bytes] = {}
        # source link -> destination key -> (ticket expiry in unix seconds, ticket epoch, token)
        self._allowed: dict[SwitchLink, dict[bytes, tuple[int, int, str]]] = {}
        self.mesh = MeshDirectory()
        # (router link, source key) -> destination key -> (expiry, epoch): tickets a
        # neighbour forwarded for its endpoint and this router's gate accepted
        self._remote_allowed: dict[tuple[SwitchLink, bytes], dict[bytes, tuple[int, int]]] = {}
        # source endpoint link -> destination key -> (router link, token) forwarded there
        self._forwarded: dict[SwitchLink, dict[bytes, tuple[SwitchLink, str]]] = {}

    # -- links ---------------------------------------------------------------------------

    def register(self, link: SwitchLink, noise_key: bytes | None) -> None:
        """An endpoint link whose SVID binds `noise_key` (a destination once it speaks the
        relay; the newest such link for a key wins)."""
        if noise_key is None or len(noise_key) != WG_KEY_SIZE:
            return
        self._key_of[link] = noise_key

    def add_router(self, link: SwitchLink) -> None:
        """A link to a neighbouring router: told our relay keys once its HELLO is done."""
        self.mesh.add_router(link)

    def link_gone(self, link: SwitchLink) -> None:
        self._allowed.pop(link, None)
        self._forwarded.pop(link, None)
        if link.kind is LinkKind.ROUTER:
            self.mesh.router_gone(link)
            for pair in [p for p in self._remote_allowed if p[0] is link]:
                del self._remote_allowed[pair]
            for forwarded in self._forwarded.values():
                for peer in [k for k, (via, _) in forwarded.items() if via is link]:
                    del forwarded[peer]
        key = self._key_of.pop(link, None)
        if key is None:
            return
        links = self._by_key.get(key, [])
        if link in links:
            links.remove(link)
        if not links and self._by_key.pop(key, None) is not None:
            self.mesh.changed()

    def poll_announce(self) -> None:
        """Queue the key announcements neighbours are owed (cheap when nothing changed:
        the key set, one entry per endpoint link, is copied only when one is owed)."""
        if not self.mesh.due():
            return
        for link, buffers in self.mesh.poll(set(self._by_key)):
            self._send(link, buffers)  # type: ignore[arg-type]  # bytes are buffers

    def statistics(self) -> dict[str, int]:
        return {
            "keys": len(self._by_key),
            "allowances": sum(len(a) for a in self._allowed.values()),
            "remote_allowances": sum(len(a) for a in self._remote_allowed.values()),
            **self.mesh.statistics(),
        }

    # -- frames --------------------------------------------------------------------------

    def handle_allow(self, source: SwitchLink, frame: Frame, now: Instant) -> None:
        """WG_RELAY_ALLOW {"ticket", "peer": hex key}: check and remember the allowance.
        From a router: a key announcement or a forwarded ticket (`router.relay_mesh`)."""
        if source.kind is LinkKind.ROUTER:
            self._router_allow(source, frame, now)
            return
        try:
            control = decode_control(frame.payload)
            token = control.fields["ticket"]
            peer = bytes.fromhex(control.fields["peer"])
        except (WireError, KeyError, TypeError, ValueError, binascii.Error):
            raise WireError(
                ErrorCode.BAD_CONTROL_PAYLOAD, "WG_RELAY_ALLOW needs ticket and peer"
            ) from None
        if not isinstance(token, str) or len(peer) != WG_KEY_SIZE:
            raise WireError(ErrorCode.BAD_CONTROL_PAYLOAD, "WG_RELAY_ALLOW needs ticket and peer")
        mine = self._key_of.get(source)
        if mine is not None and source not in self._allowed:
            if mine not in self._by_key:
                self.mesh.changed()
            self._by_key.setdefault(mine, []).append(source)
            self._allowed[source] = {}
        verdict = self._gate.check(
            token,
            subject=source.identity,
            service=relay_service(peer),
            action=Action.RELAY,
            now=now,
            link_bucket=source.ticket_bucket,
            link_identity=source.identity,
            peer_key=source.peer_key,
        )
        ticket = verdict.ticket
        if ticket is None:
            self._refuse(source, peer, verdict.code, verdict.reason)
            return
        allowed = self._allowed.setdefault(source, {})
        allowed.pop(peer, None)
        if len(allowed) >= MAX_ALLOWANCES:
            del allowed[next(iter(allowed))]
        allowed[peer] = (ticket.expires_at, ticket.epoch, token)
        self._forwarded.get(source, {}).pop(peer, None)  # a neighbour gets the new one
        self._counters["relay_allowances"] += 1

    def handle_datagram(self, source: SwitchLink, frame: Frame, now: Instant) -> None:
        """WG_DATAGRAM from an endpoint: forward it to the destination key's link (here or
        at a neighbouring router), or count why not. From a router: see `_router_datagram`."""
        if source.kind is LinkKind.ROUTER:
            self._router_datagram(source, frame, now)
            return
        payload = frame.payload
        size = len(payload)
        if size <= WG_KEY_SIZE:
            self._count("relay_bad_datagram", source, "WG_DATAGRAM without a datagram")
            return
        if size - WG_KEY_SIZE > MAX_WG_DATAGRAM:
            self._count("relay_oversized", source, f"{size - WG_KEY_SIZE} bytes")
            return
        peer = bytes(payload[:WG_KEY_SIZE])
        allowed = self._allowed.get(source)
        entry = None if allowed is None else allowed.get(peer)
        if entry is None:
            self._count(ErrorCode.RELAY_NOT_ALLOWED.code, source, "no relay ticket for the pair")
            return
        expires_at, epoch, token = entry
        if now.unix >= expires_at or epoch < self._gate.epoch:
            assert allowed is not None
            del allowed[peer]
            code = ErrorCode.TICKET_EXPIRED if now.unix >= expires_at else ErrorCode.TICKET_STALE
            self._refuse(source, peer, code, "relay ticket no longer valid; present a fresh one")
            return
        mine = self._key_of.get(source)
        if mine is None:
            self._count("relay_no_source_key", source, "the link's certificate binds no key")
            return
        targets = self._by_key.get(peer)
        if not targets:
            via = self.mesh.remote.get(peer)
            if via is None:
                self._count(ErrorCode.RELAY_UNKNOWN_PEER.code, source, "no link holds that key")
                return
            self._to_neighbour(source, via, (peer, mine), token, payload)
            return
        target = targets[-1]
        if self.congested(target):
            self._count(ErrorCode.RELAY_QUEUE_FULL.code, source, "destination link backed up")
            return
        # The view is joined (copied) into the link's write before this read's buffer is reused.
        body = payload[WG_KEY_SIZE:]
        self._send(target, [encode_header(_DATAGRAM, 0, size), mine, body])
        self._counters["relay_datagrams"] += 1

    # -- across the mesh (router.relay_mesh) -------------------------------------------------

    def _to_neighbour(
        self,
        source: SwitchLink,
        via: SwitchLink,
        pair: tuple[bytes, bytes],
        token: str,
        payload: memoryview | bytes,
    ) -> None:
        """An allowed datagram whose destination is at neighbour `via`: the source's ticket
        goes first (once per ticket and neighbour), then the datagram with both keys
        (`pair`: destination, source)."""
        peer, mine = pair
        if self.congested(via):
            self._count(ErrorCode.RELAY_QUEUE_FULL.code, source, "neighbour link backed up")
            return
        forwarded = self._forwarded.setdefault(source, {})
        if forwarded.get(peer) != (via, token):
            fields = {
                "ticket": token,
                "peer": peer.hex(),
                "source": mine.hex(),
                "subject": source.identity,
                "binding": source.peer_key or "",
            }
            control = encode_control(fields)
            self._send(
                via, [encode_header(int(FrameType.WG_RELAY_ALLOW), 0, len(control)), control]
            )
            forwarded[peer] = (via, token)
        body = payload[WG_KEY_SIZE:]
        size = len(payload) + WG_KEY_SIZE
        self._send(via, [encode_header(_DATAGRAM, 0, size), peer, mine, body])
        self._counters["relay_mesh_datagrams"] += 1

    def _router_allow(self, link: SwitchLink, frame: Frame, now: Instant) -> None:
        try:
            fields = decode_control(frame.payload).fields
            if "keys" in fields or "gone" in fields:
                added = parse_keys(fields.get("keys", []))
                self.mesh.learn(link, added, parse_keys(fields.get("gone", [])))
                return
            token, subject, binding = fields["ticket"], fields["subject"], fields["binding"]
            peer, origin = parse_keys([fields["peer"], fields["source"]])
        except (KeyError, TypeError):
            raise WireError(
                ErrorCode.BAD_CONTROL_PAYLOAD, "forwarded WG_RELAY_ALLOW needs its fields"
            ) from None
        if not all(isinstance(v, str) for v in (token, subject, binding)):
            raise WireError(ErrorCode.BAD_CONTROL_PAYLOAD, "forwarded WG_RELAY_ALLOW fields")
        if peer not in self._by_key:
            self._refuse_remote(link, origin, peer, ErrorCode.RELAY_UNKNOWN_PEER, "not here")
            return
        # The ticket is checked here as if the source were linked: the neighbour reports
        # the subject and certificate key of the link it came from, and grants nothing.
        verdict = self._gate.check(
            token,
            subject=subject,
            service=relay_service(peer),
            action=Action.RELAY,
            now=now,
            link_bucket=link.ticket_bucket,
            link_identity=subject,
            peer_key=binding or None,
        )
        ticket = verdict.ticket
        if ticket is None:
            self._refuse_remote(link, origin, peer, verdict.code, verdict.reason)
            return
        allowed = self._remote_allowed.setdefault((link, origin), {})
        allowed.pop(peer, None)
        if len(allowed) >= MAX_ALLOWANCES:
            del allowed[next(iter(allowed))]
        if len(self._remote_allowed) > MAX_ALLOWANCES * 64:
            del self._remote_allowed[next(iter(self._remote_allowed))]
        allowed[peer] = (ticket.expires_at, ticket.epoch)
        self._counters["relay_mesh_allowances"] += 1

    def _router_datagram(self, link: SwitchLink, frame: Frame, now: Instant) -> None:
        """WG_DATAGRAM from a neighbour: destination key, source key, sealed datagram."""
        payload = frame.payload
        if len(payload) <= 2 * WG_KEY_SIZE:
            self._count("relay_bad_datagram", link, "mesh WG_DATAGRAM without a datagram")
            return
        if len(payload) - 2 * WG_KEY_SIZE > MAX_WG_DATAGRAM:
            self._count("relay_oversized", link, f"{len(payload)} bytes from a neighbour")
            return
        peer = bytes(payload[:WG_KEY_SIZE])
        origin = bytes(payload[WG_KEY_SIZE : 2 * WG_KEY_SIZE])
        allowed = self._remote_allowed.get((link, origin))
        entry = None if allowed is None else allowed.get(peer)
        if entry is None:
            reason = "no relay ticket checked here for the pair"
            self._count(ErrorCode.RELAY_NOT_ALLOWED.code, link, reason)
            return
        expires_at, epoch = entry
        if now.unix >= expires_at or epoch < self._gate.epoch:
            assert allowed is not None
            del allowed[peer]
            code = ErrorCode.TICKET_EXPIRED if now.unix >= expires_at else ErrorCode.TICKET_STALE
            self._refuse_remote(link, origin, peer, code, "relay ticket no longer valid")
            return
        targets = self._by_key.get(peer)
        if not targets:
            self._count(ErrorCode.RELAY_UNKNOWN_PEER.code, link, "no link here holds that key")
            return
        target = targets[-1]
        if self.congested(target):
            self._count(ErrorCode.RELAY_QUEUE_FULL.code, link, "destination link backed up")
            return
        body = payload[2 * WG_KEY_SIZE :]
        self._send(target, [encode_header(_DATAGRAM, 0, len(body) + WG_KEY_SIZE), origin, body])
        self._counters["relay_datagrams"] += 1

    def handle_error(self, link: SwitchLink, frame: Frame) -> None:
        """WG_RELAY_ERR from a neighbour about one of our endpoints' pairs: pass it on, so
        the device presents a fresh ticket; the forwarded mark goes so the next is sent."""
        try:
            fields = decode_control(frame.payload).fields
            peer, origin = parse_keys([fields["peer"], fields["source"]])
            code = ErrorCode(int(fields["code"]))
            reason = str(fields["reason"])
        except (KeyError, TypeError, ValueError):
            raise WireError(ErrorCode.BAD_CONTROL_PAYLOAD, "WG_RELAY_ERR fields") from None
        self._counters["relay_mesh_errors"] += 1
        for source in self._by_key.get(origin, []):
            self._forwarded.get(source, {}).pop(peer, None)
            self._allowed.get(source, {}).pop(peer, None)
            self._refuse(source, peer, code, f"at the next router: {reason}")

    def _refuse_remote(
        self, link: SwitchLink, origin: bytes, peer: bytes, code: ErrorCode, reason: str
    ) -> None:
        self._count(code.code, link, reason)
        fields = {"code": int(code), "reason": reason, "peer": peer.hex(), "source": origin.hex()}
        payload = encode_control(fields)
        self._send(link, [encode_header(int(FrameType.WG_RELAY_ERR), 0, len(payload)), payload])

    def _refuse(self, source: SwitchLink, peer: bytes, code: ErrorCode, reason: str) -> None:
        self._count(code.code, source, reason)
        fields = {"code": int(code), "reason": reason, "peer": peer.hex()}
        payload = encode_control(fields)
        self._send(source, [encode_header(int(FrameType.WG_RELAY_ERR), 0, len(payload)), payload])

    def _send(self, target: SwitchLink, buffers: list[bytes | memoryview]) -> None:
        target.outbox.extend(buffers)  # type: ignore[arg-type]  # joined before the read ends
        self._dirty.add(target)
