"""The router process: a mutual-TLS listener for endpoint links around the Forwarder.

The listener is the router's only open port. A connection becomes a link only after TLS
(chain checked by OpenSSL against the network CA) and the SPIFFE checks at `now`; anything
else (garbage, a client without a certificate, an expired SVID) is refused and counted, and
other links never notice.

Failed handshakes are counted where they happen, in the TLS object's `do_handshake` (the
context's documented `sslobject_class` hook): the event loop swallows them, since asyncio
and uvloop report a handshake `SSLError` (an OSError) only in debug mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from umbranet.aio.link import Link
from umbranet.aio.tls import link_server_context, load_identity, peer_svid
from umbranet.pki import IdentityFile, PkiError
from umbranet.router.admission import link_key_fingerprint
from umbranet.router.forwarder import Forwarder, PeerLink
from umbranet.router.recheck import RecheckRound
from umbranet.wire import ErrorCode, Frame

log = logging.getLogger("umbranet.router")

# (identity, service, action) triples -> index -> reason, for those no longer allowed.
Recheck = Callable[[list[tuple[str, str, str]]], Awaitable[dict[int, str]]]


@dataclass(slots=True)
class RouterConfig:
    """Where a router listens and how long it waits for a new link to say HELLO."""

    identity: IdentityFile
    host: str = "127.0.0.1"
    port: int = 7443
    hello_timeout: float = 10.0
    tls_handshake_timeout: float = 10.0
    # Stop reading a link while this much waits to be written to it (see `_throttle`).
    link_buffer_limit: int = 4 * 1024 * 1024


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Router:
    """`async with Router(config) as router:` serves until the block ends."""

    def __init__(self, config: RouterConfig, clock: Callable[[], datetime] = _utcnow) -> None:
        self.config = config
        self._clock = clock
        self.identity = config.identity
        self._ssl: ssl.SSLContext = link_server_context(config.identity)
        self._ssl.sslobject_class = _counting_ssl_objects(self._handshake_failed)
        self.forwarder = Forwarder(lambda: self.identity.bundle, clock, self.name)
        self._links: dict[Link, PeerLink] = {}
        self._server: asyncio.Server | None = None
        self._timers: dict[Link, asyncio.TimerHandle] = {}
        self._throttled: dict[Link, asyncio.Task[None]] = {}
        self._checked_epoch = 0  # the newest epoch whose live grants were re-checked

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def address(self) -> str:
        """host:port actually bound (the port may have been 0)."""
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Link(self),
            self.config.host,
            self.config.port,
            ssl=self._ssl,
            ssl_handshake_timeout=self.config.tls_handshake_timeout,
            backlog=1024,
        )
        log.info("router %s listening on %s", self.name, self.address)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._throttled.values()):
                task.cancel()
            for link in list(self._links):
                link.close(ErrorCode.SHUTTING_DOWN, "router stopping")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def renew(self, identity: IdentityFile) -> None:
        """Use a renewed certificate for new links; existing links keep theirs.

        Loading into the context the listener already holds affects only later handshakes.
        """
        self.identity = identity
        load_identity(self._ssl, identity)

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
                    self.forwarder.counters[ErrorCode.CERT_REVOKED.code] += 1
                    log.info("closing link of %s: certificate revoked", link.peer_id)
                    link.close(ErrorCode.CERT_REVOKED, "this link's certificate was revoked")

        self.forwarder.epoch = max(self.forwarder.epoch, epoch)
        if epoch <= self._checked_epoch:
            close_revoked_links()  # a `hello` repeats recent revocations
            return 0
        loop = asyncio.get_running_loop()
        grants = self.forwarder.live_grants(list(self._links.values()))
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
        if identities is None:
            self._checked_epoch = max(self._checked_epoch, epoch)
        closures = rnd.poll_closures()
        dirty: set[PeerLink] = set()
        for closure in closures:
            self.forwarder.revoke(closure.handle, closure.reason, dirty)
        self._flush(dirty)
        # After the re-check, so live streams end with the reason (`revoked`), not with
        # the loss of their link.
        close_revoked_links()
        stats = rnd.statistics()
        counters = self.forwarder.counters
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
        return len(closures)

    def statistics(self) -> dict[str, Any]:
        """Counters for status pages and tests."""
        return {
            "links": len(self._links),
            "circuits": self.forwarder.circuits,
            "bindings": len(self.forwarder.terminators),
            "counters": dict(self.forwarder.counters),
        }

    # -- LinkOwner ----------------------------------------------------------------------

    def link_made(self, link: Link) -> None:
        assert link.transport is not None
        try:
            peer = peer_svid(link.transport, self.identity.bundle, self._clock())
        except PkiError as exc:
            self.forwarder.counters[exc.code] += 1
            log.warning("refused link code=%s reason=%s", exc.code, exc.reason)
            link.close(ErrorCode.NOT_AUTHORIZED, f"certificate rejected: {exc.reason}")
            return
        link.peer_id = str(peer.spiffe_id)
        self._links[link] = PeerLink(link, link.peer_id)
        self.forwarder.counters["links_accepted"] += 1
        self._timers[link] = asyncio.get_running_loop().call_later(
            self.config.hello_timeout, self._hello_deadline, link
        )

    def frames_received(self, link: Link, frames: list[Frame]) -> None:
        state = self._links.get(link)
        if state is None:
            return
        dirty: set[PeerLink] = set()
        try:
            closing = self.forwarder.frames(state, frames, dirty)
        except Exception:
            # A bug must cost one link, never the loop or other links.
            log.exception("internal error handling frames from %s", link.peer_id)
            self.forwarder.counters["internal_error"] += 1
            closing = ErrorCode.INTERNAL_ERROR, "internal error"
        self._flush(dirty)
        if closing is not None:
            link.close(*closing)
        else:
            self._throttle(link)

    def link_lost(self, link: Link, error: BaseException | None) -> None:
        timer = self._timers.pop(link, None)
        if timer is not None:
            timer.cancel()
        state = self._links.pop(link, None)
        if state is None:
            return
        if link.decode_error is not None:  # garbage that never became frames: count it too
            self.forwarder.counters[link.decode_error.code.code] += 1
        dirty: set[PeerLink] = set()
        self.forwarder.link_gone(state, dirty)
        dirty.discard(state)
        self._flush(dirty)
        log.info("link lost identity=%s", link.peer_id)

    # -- internals ----------------------------------------------------------------------

    def _flush(self, dirty: set[PeerLink]) -> None:
        for peer in dirty:
            if peer.outbox:
                out, peer.outbox = peer.outbox, []
                link = peer.link
                assert isinstance(link, Link)
                link.write_many(out)

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
        self.forwarder.counters["links_throttled"] += 1
        self._throttled[link] = asyncio.get_running_loop().create_task(self._unthrottle(link))

    async def _unthrottle(self, link: Link) -> None:
        try:
            await link.writable()  # below the transport's low-water mark, or lost
        finally:
            self._throttled.pop(link, None)
        if not link.closed and link.transport is not None:
            link.transport.resume_reading()

    def _hello_deadline(self, link: Link) -> None:
        self._timers.pop(link, None)
        state = self._links.get(link)
        if state is not None and not state.hello:
            self.forwarder.counters["hello_timeout"] += 1
            link.close(ErrorCode.PROTOCOL_ERROR, "no HELLO in time")

    def _handshake_failed(self, exc: ssl.SSLError) -> None:
        """Count a refused TLS handshake (garbage, no certificate, untrusted or expired)."""
        self.forwarder.counters["tls_handshake_failed"] += 1
        reason = getattr(exc, "verify_message", None) or exc.reason or type(exc).__name__
        log.warning("refused connection: TLS handshake failed (%s)", reason)


def _counting_ssl_objects(on_failure: Callable[[ssl.SSLError], None]) -> type[ssl.SSLObject]:
    """An SSLObject class that reports handshake failures before re-raising them."""

    class CountingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # not a failure: the handshake needs more bytes
            except ssl.SSLError as exc:
                on_failure(exc)
                raise

    return CountingSSLObject
