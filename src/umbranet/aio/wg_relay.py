"""A device's link to its home router for relayed WireGuard datagrams (network mode).

`RelayLink` is the relay path's IO: one mutual-TLS link to a router, spoken as an endpoint
(HELLO, keepalive, GOAWAY by `proto.link.LinkSession`), over which it presents relay
tickets (WG_RELAY_ALLOW) and carries WG_DATAGRAM frames both ways; see `router/relay.py`
for the router's side and `docs/wire.md` for the frames. It is a `RelaySender` for
`WireGuardDriver`: `send_relayed(peer, datagram)` writes one frame, or drops the datagram
(returns False, counted) when the link is not ready or its writes are paused, so the relay
never queues more than the TLS transport's own buffer. Datagrams from the router go to
`on_datagrams(source_key, datagrams)`, a run of one source's datagrams from one read at a time,
so the device opens them as one burst and the driver flushes once (one TUN write, coalesced).

A separate link from the SDK context's: the datagram path should not share a write buffer
with streams' flow control, and the relay lives as long as network mode does.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable

from umbranet.aio.driver import MachineTimer
from umbranet.aio.link import Link, open_router_link
from umbranet.aio.tls import peer_svid
from umbranet.clock import Clock, system_clock
from umbranet.pki import IdentityFile, PkiError
from umbranet.proto.link import Closing, LinkSession, LinkTimers, PeerSilent, Role
from umbranet.wire import ErrorCode, Frame, FrameType, WireError, decode_control
from umbranet.wire.control import encode_control
from umbranet.wire.frames import MAX_WG_DATAGRAM, WG_KEY_SIZE, encode_header

__all__ = ["RelayLink"]

log = logging.getLogger("umbranet.agent")

_DATAGRAM = int(FrameType.WG_DATAGRAM)
_LINK_FRAME_MAX = int(FrameType.BIND)


class RelayLink:
    """The link to one router used as the relay path. `await connect()`, then use."""

    def __init__(
        self,
        identity: IdentityFile,
        address: str,
        on_datagrams: Callable[[bytes, list[bytes]], None],
        *,
        clock: Clock = system_clock,
        timers: LinkTimers | None = None,
        mark: int | None = None,
    ) -> None:
        self.identity = identity
        self.mark = mark  # on the link's socket: an exit node's route never takes it
        self.address = address
        self._on_datagrams = on_datagrams
        self._clock = clock
        self._timers = timers
        self._link: Link | None = None
        self._session: LinkSession | None = None
        self._timer: MachineTimer | None = None
        self._ready: asyncio.Future[None] | None = None
        self.counters: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        # peers whose ticket the router refused (expired, stale): present a fresh one
        self.refused_peers: set[bytes] = set()
        self.router = ""

    async def connect(self, timeout: float = 10.0) -> None:
        self._ready = asyncio.get_running_loop().create_future()
        try:
            await open_router_link(
                self, self.address, self.identity, self._ready, timeout, mark=self.mark
            )
        except BaseException:
            self.close()
            raise

    @property
    def live(self) -> bool:
        session, link = self._session, self._link
        return session is not None and session.ready and link is not None and not link.closed

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        link = self._link
        if link is not None and not link.closed:
            if self._session is not None:
                self._session.close(ErrorCode.NO_ERROR, "network mode stopped")
                link.write_many(self._session.poll_transmit())
            link.close_transport()

    def allow(self, peer: bytes, ticket: str) -> None:
        """Present a relay ticket for datagrams to `peer` (repeat with fresh tickets)."""
        if self.live:
            fields = {"ticket": ticket, "peer": peer.hex()}
            assert self._link is not None
            self._link.send(FrameType.WG_RELAY_ALLOW, 0, encode_control(fields))
            self.counters["relay_allow_sent"] += 1

    def send_relayed(self, peer: bytes, datagram: bytes) -> bool:
        link = self._link
        if not self.live or link is None or len(datagram) > MAX_WG_DATAGRAM:
            self.counters["relay_not_ready"] += 1
            return False
        if link.write_blocked() is not None:
            self.counters["relay_backlog_drops"] += 1
            return False
        link.write(encode_header(_DATAGRAM, 0, WG_KEY_SIZE + len(datagram)) + peer + datagram)
        return True

    def send_relayed_many(self, peer: bytes, datagrams: list[bytes]) -> int:
        """`send_relayed` for a flush's datagrams to one peer, in one write (one run of TLS
        records and one send instead of one per datagram); how many were taken (all or none;
        an oversized one is dropped and counted)."""
        link = self._link
        if not self.live or link is None:
            self.counters["relay_not_ready"] += len(datagrams)
            return 0
        if link.write_blocked() is not None:
            self.counters["relay_backlog_drops"] += len(datagrams)
            return 0
        frames: list[bytes] = []
        for datagram in datagrams:
            if len(datagram) > MAX_WG_DATAGRAM:
                self.counters["relay_not_ready"] += 1
                continue
            frames += (encode_header(_DATAGRAM, 0, WG_KEY_SIZE + len(datagram)), peer, datagram)
        link.write_many(frames)
        return len(frames) // 3

    def statistics(self) -> dict[str, object]:
        return {
            "router": self.router or self.address,
            "address": self.address,
            "live": self.live,
            "rtt": self._session.rtt if self._session is not None else None,
            "counters": dict(self.counters),
            "refused": dict(self.refusals),
        }

    # -- LinkOwner -----------------------------------------------------------------------

    def link_made(self, link: Link) -> None:
        assert link.transport is not None
        now = self._clock.now()
        try:
            peer = peer_svid(link.transport, self.identity.bundle, now.wall)
        except PkiError as exc:
            link.abort()
            self._fail(ConnectionError(f"router certificate: {exc.reason}"))
            return
        if peer.spiffe_id.kind != "router":
            link.abort()
            self._fail(ConnectionError(f"{peer.spiffe_id} is not a router"))
            return
        link.peer_id = str(peer.spiffe_id)
        self.router = peer.spiffe_id.name or self.address
        self._link = link
        self._session = LinkSession(
            Role.ENDPOINT,
            opener=True,
            name=self.identity.name,
            peer_kind="router",
            now=now,
            timers=self._timers,
        )
        self._timer = MachineTimer(self._clock, self._on_timer)
        self._step()

    def frames_received(self, link: Link, frames: list[Frame]) -> None:
        session = self._session
        if session is None:
            return
        now = self._clock.now()
        session.heard(now)
        run: list[bytes] = []  # consecutive datagrams of one source
        source = b""
        try:
            for frame in frames:
                ftype = frame.type
                if ftype == _DATAGRAM:
                    payload = frame.payload
                    if len(payload) <= WG_KEY_SIZE:
                        self.counters["relay_bad_datagram"] += 1
                        continue
                    key = bytes(payload[:WG_KEY_SIZE])
                    if key != source and run:
                        self._deliver(source, run)
                        run = []
                    source = key
                    run.append(bytes(payload[WG_KEY_SIZE:]))
                elif frame.circuit == 0 and ftype < _LINK_FRAME_MAX:
                    session.handle_link_frame(frame, now)
                elif ftype == FrameType.WG_RELAY_ERR:
                    self._refused(frame)
                else:
                    self.counters["relay_unexpected_frames"] += 1
        except WireError as exc:
            session.close(exc.code, exc.reason)
        if run:
            self._deliver(source, run)
        self._step()

    def link_lost(self, link: Link, error: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._fail(ConnectionError(f"link to {self.address} lost"))
        self.counters["relay_link_lost"] += 1

    # -- internals -----------------------------------------------------------------------

    def _deliver(self, source: bytes, datagrams: list[bytes]) -> None:
        self.counters["relay_datagrams_in"] += len(datagrams)
        self._on_datagrams(source, datagrams)

    def _refused(self, frame: Frame) -> None:
        try:
            fields = decode_control(frame.payload).fields
            code = ErrorCode.from_wire(int(fields.get("code", 1))).code
            peer = bytes.fromhex(str(fields.get("peer", "")))
            if len(peer) == WG_KEY_SIZE:
                self.refused_peers.add(peer)
        except (WireError, TypeError, ValueError):
            code = "protocol_error"
        self.refusals[code] += 1
        if self.refusals[code] <= 10:
            log.warning("network mode: the router refused to relay: %s", code)

    def _on_timer(self) -> None:
        session = self._session
        if session is not None:
            session.handle_timeout(self._clock.now())
            self._step()

    def _step(self) -> None:
        session, link = self._session, self._link
        if session is None or link is None:
            return
        out = session.poll_transmit()
        if out:
            link.write_many(out)
        while (event := session.poll_event()) is not None:
            if isinstance(event, (PeerSilent, Closing)):
                self.counters["relay_link_closed"] += 1
                link.close_transport()
                self._fail(ConnectionError(f"relay link closed: {event}"))
                return
            ready = self._ready
            if ready is not None and not ready.done():
                ready.set_result(None)
        if self._timer is not None:
            self._timer.arm(session.poll_timeout())

    def _fail(self, exc: BaseException) -> None:
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_exception(exc)
