"""The router process: a mutual-TLS listener for links, the asyncio shell around the Switch.

The listener is the router's only open port. A connection becomes a link only after TLS
(chain checked by OpenSSL against the network CA) and the SPIFFE checks at `now`; anything
else (garbage, a client without a certificate, an expired SVID) is refused and counted, and
other links never notice. The switch and each link's session are sans-IO machines; this
shell feeds them reads and timer expiries and writes what they produce (`aio/driver.py`).

Failed handshakes are counted where they happen, in the TLS object's `do_handshake` (the
context's documented `sslobject_class` hook): the event loop swallows them, since asyncio
and uvloop report a handshake `SSLError` (an OSError) only in debug mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import ssl
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from umbranet.aio.acceptor import AcceptLimits, Acceptor
from umbranet.aio.driver import MachineTimer
from umbranet.aio.link import Link
from umbranet.aio.tls import (
    DirectSSLObject,
    link_client_context,
    link_server_context,
    load_identity,
    peer_svid,
)
from umbranet.clock import Clock, system_clock
from umbranet.pki import IdentityFile, PkiError
from umbranet.router.admission import link_key_fingerprint
from umbranet.router.links import LinkKind, SwitchLink
from umbranet.router.quotas import SwitchLimits
from umbranet.router.recheck import RecheckRound
from umbranet.router.switch import Switch
from umbranet.wire import ErrorCode, Frame

log = logging.getLogger("umbranet.router")

# A re-validated circuit lives this much longer: what a fresh ticket would give it.
REVALIDATED_LIFETIME = 600
# (identity, service, action) triples -> index -> reason, for those no longer allowed.
Recheck = Callable[[list[tuple[str, str, str]]], Awaitable[dict[int, str]]]


@dataclass(slots=True)
class RouterConfig:
    """Where a router listens, and what it lets each link cost it (`limits`)."""

    identity: IdentityFile
    host: str = "127.0.0.1"
    port: int = 7443
    # How many TLS handshakes may be in progress (per source address, in all) and for how long.
    accept: AcceptLimits = field(default_factory=AcceptLimits)
    # Stop reading a link while this much waits to be written to it (see `_throttle`).
    link_buffer_limit: int = 4 * 1024 * 1024
    limits: SwitchLimits = field(default_factory=SwitchLimits)
    # Never a middle hop, whatever the controller says (it can also mark us so itself).
    no_transit: bool = False


class Router:
    """`async with Router(config) as router:` serves until the block ends."""

    def __init__(self, config: RouterConfig, clock: Clock = system_clock) -> None:
        self.config = config
        self._clock = clock
        self.identity = config.identity
        self._ssl: ssl.SSLContext = link_server_context(config.identity)
        self._ssl.sslobject_class = _counting_ssl_objects(self._handshake_failed)
        self.switch = Switch(lambda: self.identity.bundle, self.name, config.limits)
        self.switch.no_transit = config.no_transit
        # A relayed WireGuard datagram towards a link whose writes are paused is dropped.
        self.switch.relay.congested = _write_paused
        self._links: dict[Link, SwitchLink] = {}
        self._acceptor: Acceptor | None = None
        self._timers: dict[Link, MachineTimer] = {}
        self._switch_timer: MachineTimer | None = None
        # Bytes in, bytes out and frames in of links already gone (totals only grow).
        self._gone_totals = [0, 0, 0]
        self._address = ""
        self._throttled: dict[Link, asyncio.Task[None]] = {}
        self._checked_epoch = 0  # the newest epoch whose live grants were re-checked
        # Links this router dialed (to neighbouring routers) -> the SPIFFE ID expected there.
        self._outbound: dict[Link, str] = {}
        self._client_ssl: ssl.SSLContext | None = None
        # Called when a router link becomes ready or is lost (the mesh shell re-plans).
        self.on_mesh_change: Callable[[], None] | None = None

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def address(self) -> str:
        """host:port actually bound (the port may have been 0)."""
        assert self._address, "the router has not started"
        return self._address

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._switch_timer = MachineTimer(self._clock, self._switch_deadline)
        _raise_fd_limit()
        sock = Acceptor.bind(self.config.host, self.config.port)
        self._acceptor = Acceptor(
            sock, lambda: Link(self), self._ssl, self.config.accept, self._count
        )
        self._acceptor.start()
        host, port = self._acceptor.address
        self._address = f"{host}:{port}"
        log.info("router %s listening on %s", self.name, self.address)

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            for task in list(self._throttled.values()):
                task.cancel()
            for link, state in list(self._links.items()):
                state.session.close(ErrorCode.SHUTTING_DOWN, "router stopping")
                self._close(link)
            if self._switch_timer is not None:
                self._switch_timer.cancel()
            self._acceptor = None

    def renew(self, identity: IdentityFile) -> None:
        """Use a renewed certificate for new links; existing links keep theirs.

        Loading into the context the listener already holds affects only later handshakes.
        """
        self.identity = identity
        load_identity(self._ssl, identity)
        # A CA announced by a rotation is trusted from now on (a context's CA list only
        # grows; the old CA stays trusted through the overlap, as the bundle says).
        self._ssl.load_verify_locations(cadata=identity.bundle.ca_pem)
        self._client_ssl = None  # the next dial to a neighbour presents the new certificate

    async def dial_router(self, address: str, spiffe_id: str, timeout: float = 10.0) -> Link:
        """Open a link to the neighbouring router `spiffe_id` listening at `address`.

        The link is multiplexed like an accepted one; this side says HELLO first and opens
        odd circuit ids. A certificate other than `spiffe_id`'s is refused after the TLS
        handshake (the link closes with ``not_authorized``), so a stale or hijacked address
        never becomes a route. Returns once TLS is done (`on_mesh_change` says when HELLO
        is); raises OSError or TimeoutError if the neighbour cannot be reached.
        """
        if self._client_ssl is None:
            self._client_ssl = link_client_context(self.identity)
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        made: list[Link] = []

        def factory() -> Link:
            link = Link(self)
            self._outbound[link] = spiffe_id
            made.append(link)
            return link

        loop = asyncio.get_running_loop()
        try:
            _, link = await asyncio.wait_for(
                loop.create_connection(
                    factory, host, int(port), ssl=self._client_ssl, server_hostname=host
                ),
                timeout,
            )
        finally:
            for attempt in made:  # a connection that never became a link
                if attempt not in self._links:
                    self._outbound.pop(attempt, None)
        return link

    def router_links(self) -> dict[str, SwitchLink]:
        """Ready links to neighbouring routers, by the neighbour's SPIFFE ID (the newest if
        there are several)."""
        return {
            state.identity: state
            for state in self._links.values()
            if state.kind is LinkKind.ROUTER and state.session.ready
        }

    async def apply_epoch(
        self,
        epoch: int,
        recheck: Recheck,
        identities: Collection[str] | None = None,
        revoked_keys: Collection[str] = (),
    ) -> int:
        """Adopt the controller's revocation epoch and close what is no longer allowed.

        Tickets from older epochs are refused from now on; live circuits and bindings are
        re-checked with the controller (`recheck`), deduplicated and in bounded chunks, and
        those it denies are closed with the reason. Grants it could not answer for (two
        failed attempts, or `recheck.DEADLINE_SECONDS`) are closed too: a revocation must
        not be outlived by a failing controller. With `identities` (an event naming whose
        posture moved), only their grants are re-checked. Links whose client certificate has
        one of `revoked_keys` are closed then (``cert_revoked``). Returns how many grants
        were closed.
        """

        def close_revoked_links() -> None:
            if not revoked_keys:
                return
            revoked = frozenset(revoked_keys)
            for link in list(self._links):
                ssl_object = link.transport.get_extra_info("ssl_object") if link.transport else None
                der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                if der and link_key_fingerprint(der) in revoked:
                    self.switch.counters[ErrorCode.CERT_REVOKED.code] += 1
                    log.info("closing link of %s: certificate revoked", link.peer_id)
                    state = self._links.get(link)
                    if state is not None:
                        reason = "this link's certificate was revoked"
                        state.session.close(ErrorCode.CERT_REVOKED, reason)
                    self._close(link)

        self.switch.epoch = max(self.switch.epoch, epoch)
        if epoch <= self._checked_epoch:
            close_revoked_links()  # a `hello` repeats recent revocations
            return 0
        grants = self.switch.live_grants(list(self._links.values()))
        self.switch.counters["rechecks"] += 1
        closed = await self._recheck_round(epoch, grants, recheck, identities)
        if identities is None:
            self._checked_epoch = max(self._checked_epoch, epoch)
        # After the re-check, so live streams end with the reason (`revoked`), not with
        # the loss of their link.
        close_revoked_links()
        return len(closed)

    async def revalidate_expired(self, recheck: Recheck) -> int:
        """A circuit lives as long as its ticket: one whose ticket has expired is re-checked
        with the controller, which answers only for grants with a current ticket (the SDK
        fetches one while its streams are open). Confirmed circuits live another ticket
        lifetime; the rest are closed with the controller's reason, or `recheck_failed`
        when it cannot answer. Returns how many were closed."""
        now = int(self._clock.now().unix)
        expired = self.switch.expired_grants(now)
        if not expired:
            return 0
        self.switch.counters["revalidations"] += 1
        closed = await self._recheck_round(self.switch.epoch, expired, recheck, None)
        for _identity, _service, _action, route in expired:
            if id(route) not in closed:
                route.expires_at = now + REVALIDATED_LIFETIME  # type: ignore[attr-defined]
        return len(closed)

    async def _recheck_round(
        self,
        epoch: int,
        grants: list[tuple[str, str, str, object]],
        recheck: Recheck,
        identities: Collection[str] | None,
    ) -> set[int]:
        """One re-check round (chunks, retries, fail closed); closes what it must and
        returns the ids of the handles it closed."""
        loop = asyncio.get_running_loop()
        rnd = RecheckRound(epoch, grants, loop.time(), only=identities)
        while (chunk := rnd.poll_request(loop.time())) is not None:
            try:
                denied = await asyncio.wait_for(
                    recheck(chunk.triples()), max(0.001, rnd.remaining(loop.time()))
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, timed out, unreachable: all count alike
                log.warning("epoch %d: re-check failed: %s", epoch, exc)
                rnd.handle_failure(chunk.id, type(exc).__name__)
                continue
            rnd.handle_answer(chunk.id, denied)
        closures = rnd.poll_closures()
        for closure in closures:
            self.switch.revoke(closure.handle, closure.reason, closure.code)
        self._flush()
        stats = rnd.statistics()
        counters = self.switch.counters
        counters["recheck_rounds"] += 1
        counters["recheck_requests"] += stats["requests"]
        counters["recheck_failures"] += stats["failures"]
        counters[ErrorCode.RECHECK_FAILED.code] += stats["failed_closed"]
        if closures:
            log.info(
                "epoch %d: closed %d grants (%d denied, %d not re-checkable)",
                epoch,
                len(closures),
                stats["denied"],
                stats["failed_closed"],
            )
        return {id(closure.handle) for closure in closures}

    def statistics(self) -> dict[str, Any]:
        """Counters for status pages and tests."""
        switch = self.switch
        return {
            "links": len(self._links),
            "circuits": switch.circuits,
            "bindings": len(switch.terminators),
            "pending_handshakes": switch.pending_handshakes,
            "in_flight": switch.in_flight,
            "bytes_in": self._gone_totals[0] + sum(link.bytes_in for link in self._links),
            "bytes_out": self._gone_totals[1] + sum(link.bytes_out for link in self._links),
            "frames_in": self._gone_totals[2] + sum(link.frames_in for link in self._links),
            "frames_out": switch.frames_out,
            "epoch": switch.epoch,
            "counters": dict(switch.counters),
            # How dials found their host: `picked_<strategy>`, `picked_session_host` (an
            # in-session open to the host holding it) and `terminator_failed`.
            "terminators": dict(switch.terminators.counters),
        }

    # -- LinkOwner ----------------------------------------------------------------------

    def link_made(self, link: Link) -> None:
        assert link.transport is not None
        now = self._clock.now()
        try:
            peer = peer_svid(link.transport, self.identity.bundle, now.wall)
        except PkiError as exc:
            self.switch.counters[exc.code] += 1
            log.warning("refused link code=%s reason=%r", exc.code, exc.reason)
            link.close(ErrorCode.NOT_AUTHORIZED, f"certificate rejected: {exc.reason}")
            return
        link.peer_id = str(peer.spiffe_id)
        expected = self._outbound.get(link)
        if expected is not None and link.peer_id != expected:
            self._outbound.pop(link, None)
            self.switch.counters["mesh_wrong_peer"] += 1
            log.warning("refused link to %s: it presented %s", expected, link.peer_id)
            link.close(ErrorCode.NOT_AUTHORIZED, "not the router that was dialed")
            return
        ssl_object = link.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        key = link_key_fingerprint(der) if der else None
        opener = expected is not None
        state = self.switch.add_link(
            link,
            link.peer_id,
            peer.spiffe_id.kind or "",
            now,
            opener=opener,
            peer_key=key,
            noise_key=peer.noise_public_key,
        )
        self._links[link] = state
        self.switch.counters["links_dialed" if opener else "links_accepted"] += 1
        if opener:
            link.write_many(state.session.poll_transmit())  # HELLO: the dialer speaks first
        timer = MachineTimer(self._clock, lambda: self._link_deadline(link))
        self._timers[link] = timer
        timer.arm(state.session.poll_timeout())

    def frames_received(self, link: Link, frames: list[Frame]) -> None:
        state = self._links.get(link)
        if state is None:
            return
        switch = self.switch
        was = state.session.state
        try:
            closing = switch.frames(state, frames, self._clock.now())
        except Exception:
            # A bug must cost one link, never the loop or other links.
            log.exception("internal error handling frames from %s", link.peer_id)
            self.switch.counters["internal_error"] += 1
            state.session.close(ErrorCode.INTERNAL_ERROR, "internal error")
            closing = ErrorCode.INTERNAL_ERROR, "internal error"
        if closing is None and switch.quiet:
            # Only relayed DATA and CREDIT: no deadline moved earlier, nothing was shed.
            for peer, out in switch.poll_relayed():
                peer.handle.write_many(out)  # type: ignore[attr-defined]
            transport = link.transport  # `_throttle`'s test, inline: this runs per read
            if transport is not None and (
                transport.get_write_buffer_size() > self.config.link_buffer_limit
            ):
                self._throttle(link)
            return
        self._flush()
        if closing is not None:
            self._close(link)
            return
        if state.session.state is not was:
            # Only a new link state (HELLO done) can bring its deadline earlier: traffic
            # only pushes the keepalive and silence deadlines later, and the timer armed
            # for an earlier moment re-arms itself when it fires.
            if state.session.ready and state.kind is LinkKind.ROUTER:
                self._mesh_changed()
            timer = self._timers.get(link)
            if timer is not None:
                timer.arm(state.session.poll_timeout())
        switch_timer = self._switch_timer
        if switch_timer is not None and switch_timer.armed_at is None:
            # Handshake deadlines are added in the order they fall due, so an armed timer
            # is never later than a new one: arm only when none is armed.
            switch_timer.arm(switch.poll_timeout())
        self._throttle(link)

    def link_lost(self, link: Link, error: BaseException | None) -> None:
        timer = self._timers.pop(link, None)
        if timer is not None:
            timer.cancel()
        self._outbound.pop(link, None)
        state = self._links.pop(link, None)
        if state is None:
            return
        totals = self._gone_totals
        totals[0] += link.bytes_in
        totals[1] += link.bytes_out
        totals[2] += link.frames_in
        if link.decode_error is not None:  # garbage that never became frames: count it too
            self.switch.counters[link.decode_error.code.code] += 1
        self.switch.link_gone(state)  # also drops every route through this link, at once
        self._flush()
        log.info("link lost identity=%s", link.peer_id)
        if state.kind is LinkKind.ROUTER:
            self._mesh_changed()

    # -- internals ----------------------------------------------------------------------

    def _mesh_changed(self) -> None:
        if self.on_mesh_change is not None:
            self.on_mesh_change()

    def _flush(self) -> None:
        for peer, out in self.switch.poll_transmit():
            handle = peer.handle
            assert isinstance(handle, Link)
            handle.write_many(out)
        for shed in self.switch.poll_shed():
            assert isinstance(shed.handle, Link)
            self._close(shed.handle)

    def _close(self, link: Link) -> None:
        """Close a link whose GOAWAY its session has queued (and `_flush` written)."""
        state = self._links.get(link)
        if state is not None:
            out = state.session.poll_transmit()
            if out:
                link.write_many(out)
        link.close_transport()

    def _link_deadline(self, link: Link) -> None:
        state = self._links.get(link)
        if state is None:
            return
        closing = self.switch.link_timeout(state, self._clock.now())
        self._flush()
        if closing is None:
            self._timers[link].arm(state.session.poll_timeout())
        elif closing[0] is ErrorCode.PEER_GONE:
            link.abort()  # a silent peer never drains what is queued for it
        else:
            self._close(link)

    def _switch_deadline(self) -> None:
        self.switch.handle_timeout(self._clock.now())
        self._flush()
        if self._switch_timer is not None:
            self._switch_timer.arm(self.switch.poll_timeout())

    def _throttle(self, link: Link) -> None:
        """Stop reading a link while its own outbound buffer is over the limit.

        Relayed DATA is bounded by circuit windows, but answers are not: a peer that sends
        PINGs or refused DIALs without ever reading would make the router buffer every
        PONG and RESET. So the router reads from a link only while that link drains.
        """
        transport = link.transport
        if link in self._throttled or transport is None or link.closed:
            return
        if transport.get_write_buffer_size() <= self.config.link_buffer_limit:
            return
        transport.pause_reading()
        self.switch.counters["links_throttled"] += 1
        self._throttled[link] = asyncio.get_running_loop().create_task(self._unthrottle(link))

    async def _unthrottle(self, link: Link) -> None:
        try:
            await link.writable()  # below the transport's low-water mark, or lost
        finally:
            self._throttled.pop(link, None)
        if not link.closed and link.transport is not None:
            link.transport.resume_reading()

    def stop_accepting(self) -> None:
        """Accept no new links; those already made carry on."""
        if self._acceptor is not None:
            self._acceptor.close()

    def _count(self, code: str) -> None:
        self.switch.counters[code] += 1
        log.warning("refused connection code=%s", code)

    def _handshake_failed(self, exc: ssl.SSLError) -> None:
        """Count a refused TLS handshake (garbage, no certificate, untrusted or expired)."""
        self.switch.counters["tls_handshake_failed"] += 1
        reason = getattr(exc, "verify_message", None) or exc.reason or type(exc).__name__
        log.warning("refused connection: TLS handshake failed (%s)", reason)


def _counting_ssl_objects(on_failure: Callable[[ssl.SSLError], None]) -> type[ssl.SSLObject]:
    """An SSLObject class that reports handshake failures before re-raising them (and keeps
    the link contexts' direct record calls, `DirectSSLObject`)."""

    class CountingSSLObject(DirectSSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # not a failure: the handshake needs more bytes
            except ssl.SSLError as exc:
                on_failure(exc)
                raise

    return CountingSSLObject


def _raise_fd_limit() -> None:
    """Use every file descriptor the system allows this process (the soft limit is often
    1,024 while the hard one is far higher): a router's links are its file descriptors."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _write_paused(state: SwitchLink) -> bool:
    handle = state.handle
    return isinstance(handle, Link) and handle.write_blocked() is not None
