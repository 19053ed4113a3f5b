"""Context: an application's handle on the network, built from its identity file.

It talks to the controller for tickets and certificate renewal, keeps one long-lived link
to each of up to three routers (the ones with the lowest measured RTT, `sdk/routers.py`),
and opens streams over them: through the best router first, through the next one when a
router is gone or refuses the way. No listening socket anywhere: `listen` hosts a service
through outbound links only.

While the controller is away, dials keep using the cached ticket of each service until it
expires (`ticket`), and links, bindings and streams stay up; fresh tickets are fetched as
soon as it answers again.

    async with Context.from_file("app.json") as ctx:
        stream = await ctx.dial("billing")

Renewed certificates are written back to the identity file, or to a separate writable
``state_path`` when the identity file is a read-only mount (a Kubernetes Secret). Renewal never
depends on the write: a save that fails is logged and counted (``renewal_save_failed``) and the
renewed identity stays in use in memory. `Context.from_env` reads the paths from
``UMBRA_IDENTITY`` and ``UMBRA_IDENTITY_STATE`` for twelve-factor apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from umbranet.client.follow import follow_events, renew_at_half_life
from umbranet.clock import Clock, system_clock
from umbranet.pki import IdentityFile
from umbranet.pki.tickets import Action
from umbranet.proto.circuit import Circuit
from umbranet.proto.e2e import DialerHandshake, LocalCredentials
from umbranet.proto.link import LinkTimers
from umbranet.proto.sessions import DEFAULT_RESUME_DEADLINE
from umbranet.sdk.connection import RouterConnection
from umbranet.sdk.errors import DialError, UmbraError
from umbranet.sdk.grants import ControlPlane, Grant, default_control
from umbranet.sdk.identity_state import newest
from umbranet.sdk.listener import Listener
from umbranet.sdk.moves import SessionMover
from umbranet.sdk.posture import PostureReporter
from umbranet.sdk.routers import MAX_ROUTER_LINKS, RETRY_ELSEWHERE, RouterRanking
from umbranet.sdk.stream import Stream
from umbranet.wire import ErrorCode

__all__ = ["ControlPlane", "Context", "Grant"]

log = logging.getLogger("umbranet.sdk")

CLOSE_TIMEOUT = 2.0
RENEWAL_RETRY = 30.0
"""Seconds between renewal attempts after one failed."""
POSTURE_FIRST_WAIT = 2.0
GRANT_CHECK_INTERVAL = 30.0
GRANT_REFRESH_BEFORE = 120.0  # seconds before a dial ticket expires


# A host's refusal of an open inside a session it does not hold (or a replay it saw), or a
# router's when the host process holding it is bound nowhere on the way (instance_gone).
_SESSION_REFUSED = frozenset(
    {ErrorCode.RESUME_REFUSED.code, ErrorCode.REPLAYED.code, ErrorCode.INSTANCE_GONE.code}
)


class Context:
    """Identity + controller + router links: everything `dial` and `listen` need."""

    def __init__(
        self,
        identity: IdentityFile,
        *,
        identity_path: Path | None = None,
        state_path: Path | None = None,
        clock: Clock = system_clock,
        control: Callable[[IdentityFile], ControlPlane] | None = None,
        renew: bool = True,
        report_posture: bool = True,
        link_timers: LinkTimers | None = None,
        routers: tuple[str, ...] | None = None,
        resume_deadline: float = DEFAULT_RESUME_DEADLINE,
        session_streams: bool = True,
    ) -> None:
        self.identity = identity
        self.clock = clock
        # Streams whose router dies move to another path within this many seconds (0: off).
        self._mover = SessionMover(clock, self._find_path, deadline=resume_deadline)
        # This context's host instance id: its bindings and sessions carry it, so a stream
        # opened in a session reaches this process, not another of the same identity.
        self._mover.sessions.instance = secrets.token_hex(8)
        # Later dials to a service open inside the session of an earlier one (0-RTT).
        self._session_streams = session_streams
        self.link_timers = link_timers  # keepalive: how soon a silent router is given up
        # A firewall mark on every router link's packets (the agent's, with an exit node).
        self.link_mark: int | None = None
        self._identity_path = identity_path
        self._state_path = state_path
        self._control_factory = control or default_control
        self._control = self._control_factory(identity)
        self._connections: dict[str, RouterConnection] = {}
        self._connecting: dict[str, asyncio.Task[RouterConnection]] = {}
        self.ranking = RouterRanking()
        # Called with a router's address when its link is lost (the agent links another).
        self.link_lost_hooks: list[Callable[[str], None]] = []
        # Pinned router addresses (a site's own routers, a benchmark's fixed path): used
        # instead of the ones the controller names in each grant.
        self.pinned_routers = tuple(routers) if routers else None
        self._tickets: dict[tuple[str, str, int | None], Grant] = {}
        self._next_binding = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listeners: weakref.WeakSet[Listener] = weakref.WeakSet()
        self.epoch = 0
        self._epoch_moved = asyncio.Event()  # set, then replaced, at every new epoch
        self._renew = renew
        self._report_posture = report_posture
        self._started = False
        self._closed = False
        self.counters: dict[str, int] = {}
        # A lambda, not the bound method: a renewal replaces `self._control`.
        send = lambda report: self._control.report_posture(report)  # noqa: E731, PLW0108
        self._posture = PostureReporter(send, self.counters)
        self._renewal_callbacks: list[Callable[[IdentityFile], None]] = []

    @classmethod
    def from_file(
        cls, path: str | Path, *, state_path: str | Path | None = None, **options: Any
    ) -> Context:
        """A context for the identity stored in `path`.

        Renewals are written back to `path`, or to `state_path` when given (for a read-only
        identity file); a `state_path` holding a newer certificate of the same identity (an
        earlier run's renewal) is used instead of `path`.
        """
        path = Path(path)
        identity = IdentityFile.load(path)
        state = Path(state_path) if state_path is not None else None
        if state is not None:
            identity = newest(identity, state)
        return cls(identity, identity_path=path, state_path=state, **options)

    @classmethod
    def from_env(cls, **options: Any) -> Context:
        """`from_file` with the paths in ``UMBRA_IDENTITY`` and (optional, writable)
        ``UMBRA_IDENTITY_STATE``; UmbraError ``no_identity`` when the first is not set."""
        path = os.environ.get("UMBRA_IDENTITY")
        if not path:
            raise UmbraError(
                "no_identity", "set UMBRA_IDENTITY to the path of this app's identity file"
            )
        return cls.from_file(path, state_path=os.environ.get("UMBRA_IDENTITY_STATE"), **options)

    async def __aenter__(self) -> Context:
        self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop hosting, cancel background work and close every router link."""
        self._closed = True
        listeners = [listener.close() for listener in list(self._listeners)]
        if listeners:
            await asyncio.wait(
                [asyncio.ensure_future(closing) for closing in listeners], timeout=CLOSE_TIMEOUT
            )
        tasks = list(self._tasks) + list(self._connecting.values())
        for task in tasks:
            task.cancel()
        # Bounded: closing a TLS stream (the controller's event stream) can wait for the
        # peer's close_notify; a closing context must never hang its application.
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
        self._mover.close()
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
        closing = asyncio.ensure_future(self._control.aclose())
        await asyncio.wait([closing], timeout=CLOSE_TIMEOUT)

    # -- the API ------------------------------------------------------------------------

    async def dial(
        self,
        service: str,
        timeout: float = 10.0,
        *,
        port: int | None = None,
        early_data: bytes = b"",
    ) -> Stream:
        """An end-to-end encrypted stream to a host of `service` (its `port`, when the policy
        allows the service only on some ports; the host sees it as ``peer.port``).

        Later dials to `service` open inside the first one's end-to-end session and return
        at once (0-RTT): the first write (or `early_data`), up to 16 KiB, rides with the
        open, so the host answers in the same round trip. Such an open's refusal raises
        DialError from the stream; one a new dial can fix (the host forgot the session, a
        stale ticket, a router with no way there) is retried with a full handshake by
        itself, what was written sent again.

        Raises DialError with the controller's, the router's or the host's code and reason.
        A ticket the router finds stale (access changed since it was issued) is replaced by
        a fresh one once; the controller decides again.
        """
        self._start()
        try:
            return await self._dial_once(service, timeout, fresh=False, port=port, early=early_data)
        except DialError as exc:
            if exc.code != ErrorCode.TICKET_STALE.code:
                raise
        return await self._dial_once(service, timeout, fresh=True, port=port, early=early_data)

    async def _dial_once(
        self,
        service: str,
        timeout: float,
        *,
        fresh: bool,
        port: int | None,
        early: bytes = b"",
        in_session: bool = True,
        skip: str = "",
        last: UmbraError | None = None,
    ) -> Stream:
        """One dial through the routers of the grant (not `skip`), best first; `last` is
        raised when none is left (default: no router)."""
        grant = await self.ticket(service, Action.DIAL, fresh=fresh, port=port)
        last = last or DialError("no_router", f"the controller named no router for {service}")
        self._warm(grant.routers)
        sessions = self._mover.sessions
        key = sessions.key_for(service) if self._session_streams and in_session else None
        for address in self.ranking.order(grant.routers, self._connections):
            if address == skip:
                continue
            try:
                connection = await self.connection(address)
            except DialError as exc:
                last = exc
                continue
            if key is not None:
                make = sessions.opener(key, service, grant.ticket, early=early, port=port)
                refused = functools.partial(
                    self._open_refused, timeout=timeout, port=port, router=address
                )
                return connection.open_stream(service, make, timeout, refused)
            handshake = DialerHandshake(service, grant.ticket, self.credentials(), port=port)
            make = functools.partial(Circuit.dial, service=service, handshake=handshake)
            circuit_id, opened = connection.open_circuit(service, make, timeout)
            try:
                stream = await opened
            except asyncio.CancelledError:
                connection.cancel_circuit(circuit_id)
                raise
            except DialError as exc:
                if exc.code not in RETRY_ELSEWHERE:
                    raise
                self._count("dial_other_router")
                last = exc  # this router has no way there (now): the next one may
                continue
            stream.write(early)  # nothing to send when empty
            return stream
        raise last

    def _open_refused(
        self, stream: Stream, error: DialError, *, timeout: float, port: int | None, router: str
    ) -> None:
        """An in-session open (0-RTT) was refused after `dial` returned its stream: dial
        again as `dial` itself would have (another router, a fresh ticket, a handshake)."""
        code, service = error.code, stream.service
        self._count("open_refused")
        if code in _SESSION_REFUSED:
            self._mover.sessions.forget(service)  # that host no longer knows us
        elif code != ErrorCode.TICKET_STALE.code and code not in RETRY_ELSEWHERE:
            stream.open_failed(error)
            return
        fresh, skip = code == ErrorCode.TICKET_STALE.code, router if code in RETRY_ELSEWHERE else ""
        again = self._dial_once(
            service, timeout, fresh=fresh, port=port, in_session=False, skip=skip, last=error
        )
        stream.replace_with(again)

    def home_router(self) -> str | None:
        """The live router link with the lowest measured RTT (where dials go first)."""
        ranked = self.ranking.order(list(self._connections), self._connections)
        live = [a for a in ranked if self._connections[a].live]
        return live[0] if live else None

    def listen(
        self,
        service: str,
        backlog: int = 128,
        *,
        ports: frozenset[int] | None = None,
        weight: int | None = None,
        precedence: str | int | None = None,
    ) -> Listener:
        """Host `service`: iterate the listener for incoming streams. Opens no port.

        With `ports`, only dialers whose ticket grants one of those service ports get through
        (the rest are refused with ``port_not_granted``); the stream's ``peer.port`` says which.
        With several hosts, `weight` (0-1000) is this one's share and `precedence`
        (``"primary"``, ``"standby"``, ``"backup"`` or 0-9) its rank: see `sdk/listener.py`.
        """
        self._start()
        listener = Listener(self, service, backlog, ports, weight=weight, precedence=precedence)
        self._listeners.add(listener)
        return listener

    def on_renewal(self, callback: Callable[[IdentityFile], None]) -> Callable[[], None]:
        """Call `callback` with each renewed identity (after it is in use and saved), so
        whoever hands the certificate out (the agent's Workload API) serves the new one.
        Returns a function that removes the callback."""
        self._renewal_callbacks.append(callback)
        return lambda: self._renewal_callbacks.remove(callback)

    def statistics(self) -> dict[str, Any]:
        return {
            "identity": self.identity.spiffe_id,
            "routers": {a: c.live for a, c in self._connections.items()},
            "router_rtt_ms": self.ranking.snapshot(self._connections),
            "home_router": self.home_router(),
            "instance": self._mover.sessions.instance,  # this process, as a host
            "counters": dict(self.counters),
            "sessions": self._mover.statistics(),
        }

    # -- for streams and listeners ------------------------------------------------------

    def credentials(self) -> LocalCredentials:
        identity = self.identity
        return LocalCredentials(identity.cert_pem, identity.noise_private_key, identity.bundle)

    async def ticket(
        self, service: str, action: Action, fresh: bool = False, port: int | None = None
    ) -> Grant:
        """A ticket for `action` on `service` (on `port`, if given: policy may allow only some
        ports of a service), reused until a minute before it expires."""
        key = (service, str(action), port)
        grant = self._tickets.get(key)
        now = self.clock.now().unix
        if fresh or grant is None or grant.expires_at - now < 60:
            if not fresh and grant is not None and grant.expires_at - now > 1:
                try:
                    return await self._fetch_grant(key, service, action, port)
                except DialError as exc:
                    if exc.code != "unreachable":
                        raise
                    # The controller is away: the cached ticket is still valid (routers
                    # check its expiry, not the controller), so use it to its end.
                    self._count("ticket_cached_offline")
                    return grant
            grant = await self._fetch_grant(key, service, action, port)
        return grant

    async def _fetch_grant(
        self, key: tuple[str, str, int | None], service: str, action: Action, port: int | None
    ) -> Grant:
        self._start()
        if self._report_posture and not self._posture.sent.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._posture.sent.wait(), POSTURE_FIRST_WAIT)
        try:
            grant = await self._control.grant(service, str(action), port)
        except UmbraError as exc:
            raise DialError(exc.code, exc.reason) from exc
        if self.pinned_routers is not None:
            grant = dataclasses.replace(grant, routers=self.pinned_routers)
        self._tickets[key] = grant
        return grant

    async def connection(self, address: str) -> RouterConnection:
        """The live link to the router at `address`, connecting once if needed."""
        connection = self._connections.get(address)
        if connection is not None and connection.live:
            return connection
        task = self._connecting.get(address)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._connect(address))
            self._connecting[address] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._connecting.pop(address, None)

    def release(self, address: str) -> bool:
        """Close the link to `address` if nothing uses it; True if it was closed."""
        connection = self._connections.get(address)
        if connection is None or not connection.idle:
            return False
        del self._connections[address]
        connection.release()
        return True

    def new_binding_id(self) -> int:
        self._next_binding += 1
        return self._next_binding

    # -- internals ----------------------------------------------------------------------

    async def _connect(self, address: str) -> RouterConnection:
        connection = RouterConnection(
            self.identity,
            address,
            self.clock,
            self._lost,
            self.link_timers,
            mover=self._mover,
            mark=self.link_mark,
        )
        started = asyncio.get_running_loop().time()
        await connection.connect()
        self.ranking.connected(address, asyncio.get_running_loop().time() - started)
        self._connections[address] = connection
        return connection

    def _warm(self, addresses: tuple[str, ...]) -> None:
        """Keep links to up to `MAX_ROUTER_LINKS` of `addresses` (best measured first), so
        a dial can move to another router without waiting for a TLS handshake."""
        live = [a for a in addresses if a in self._connections or a in self._connecting]
        for address in addresses:
            if len(live) >= MAX_ROUTER_LINKS:
                return
            if address not in live:
                live.append(address)
                self._spawn(self._warm_one(address))

    async def _warm_one(self, address: str) -> None:
        try:
            await self.connection(address)
        except UmbraError as exc:  # that router is down: dials try the others
            log.debug("no standby link to %s: %s", address, exc)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    async def _find_path(self, circuit: Circuit) -> tuple[RouterConnection, str]:
        """Another path for a paused stream (`sdk/moves.py`): a router of the service's
        grant, live links first, and a current dial ticket."""
        grant = await self.ticket(circuit.service, Action.DIAL, port=circuit.port)
        live = [a for a in grant.routers if (c := self._connections.get(a)) and c.live]
        last: UmbraError = DialError("no_router", f"no router reaches {circuit.service}")
        for address in self.ranking.order(
            live + [a for a in grant.routers if a not in live], self._connections
        ):
            try:
                return await self.connection(address), grant.ticket
            except DialError as exc:
                last = exc
        raise last

    def _lost(self, connection: RouterConnection) -> None:
        if self._connections.get(connection.address) is connection:
            del self._connections[connection.address]
        self.counters["router_links_lost"] = self.counters.get("router_links_lost", 0) + 1
        for hook in list(self.link_lost_hooks):
            hook(connection.address)

    def _start(self) -> None:
        if self._started or self._closed:
            return
        self._started = True
        if self._renew:
            self._spawn(self._renew_forever())
        if self._report_posture:
            self._spawn(self._posture.run(lambda: not self._closed))
        self._spawn(self._follow_events())
        self._spawn(self._keep_grants_current())

    async def _keep_grants_current(self) -> None:
        """Fetch a fresh dial ticket before the cached one expires while streams of that
        service are open: routers re-validate live circuits with the controller, which
        answers only for grants with a current ticket (so a long stream is not cut at the
        next policy change because its ticket aged out)."""
        while not self._closed:
            await asyncio.sleep(GRANT_CHECK_INTERVAL)
            open_services: set[str] = set()
            for connection in list(self._connections.values()):
                open_services |= connection.open_services()
            now = self.clock.now().unix
            for (service, action, port), grant in list(self._tickets.items()):
                due = grant.expires_at - now < GRANT_REFRESH_BEFORE
                if action == str(Action.DIAL) and service in open_services and due:
                    try:
                        await self.ticket(service, Action.DIAL, fresh=True, port=port)
                        self.counters["grants_refreshed"] = (
                            self.counters.get("grants_refreshed", 0) + 1
                        )
                    except UmbraError as exc:  # denied now: the router's re-check decides
                        log.info("grant for %s not refreshed: %s", service, exc)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _renew_forever(self) -> None:
        """Renew the certificate at half-life; links and streams stay up across renewals."""
        await renew_at_half_life(
            lambda: self.identity,
            self.renew_now,
            self.clock,
            retry=lambda: RENEWAL_RETRY,
            failed=self._renewal_failed,
        )

    def _renewal_failed(self, exc: Exception) -> None:
        self.counters["renewal_failed"] = self.counters.get("renewal_failed", 0) + 1
        log.warning("certificate renewal failed: %s; retrying in %gs", exc, RENEWAL_RETRY)

    async def _follow_events(self) -> None:
        """Follow the controller's pushes: a new epoch means access may have changed, so
        cached tickets are dropped and listeners bind again with fresh ones."""
        # A lambda, not the bound method: a renewal replaces `self._control`.
        events = lambda: self._control.events()  # noqa: E731, PLW0108
        await follow_events(events, self._on_event, errors=(UmbraError,), max_backoff=10.0)

    async def _on_event(self, name: str, data: dict[str, Any]) -> None:
        epoch = data.get("epoch")
        version = data.get("bundle_version")
        if isinstance(version, int) and version > self.identity.bundle.version:
            await self._refresh_bundle()
        if name in ("hello", "epoch") and isinstance(epoch, int) and epoch > self.epoch:
            self._on_epoch(epoch, name == "hello")

    async def _refresh_bundle(self) -> None:
        """Take the controller's newer trust bundle (a ticket key or CA rotation): new
        handshakes check tickets and certificates against it; live streams are untouched."""
        refreshed = await self._control.refresh_bundle()
        if refreshed is None:
            return
        self.identity = self.identity.with_bundle(refreshed.bundle)
        self._save_renewal(self.identity)
        self.counters["bundle_refreshed"] = self.counters.get("bundle_refreshed", 0) + 1
        log.info("trust bundle updated to version %d", refreshed.bundle.version)

    async def wait_epoch(self, seen: int) -> int:
        """Wait until the controller's epoch, as followed on its event stream, is no longer
        `seen`; returns the new one. How an application (the agent) reacts to a policy or
        identity change at once instead of polling."""
        while self.epoch == seen:
            await self._epoch_moved.wait()
        return self.epoch

    def _on_epoch(self, epoch: int, first: bool) -> None:
        stale = self.epoch != 0 or not first
        self.epoch = epoch
        moved, self._epoch_moved = self._epoch_moved, asyncio.Event()
        moved.set()
        if stale:
            self._tickets.clear()
            for listener in list(self._listeners):
                listener.refresh()

    async def renew_now(self) -> None:
        """Trade a fresh CSR for a new certificate now (also done automatically)."""
        renewed = await self._control.renew()
        old = self._control
        self.identity = renewed
        self._control = self._control_factory(renewed)
        self._posture.forget()  # the certificate's age is part of posture: report again
        await old.aclose()
        self._save_renewal(renewed)
        self.counters["renewals"] = self.counters.get("renewals", 0) + 1
        log.info("certificate renewed, valid until %s", renewed.certificate.not_valid_after_utc)
        for callback in list(self._renewal_callbacks):
            try:
                callback(renewed)
            except Exception:  # one broken listener must not stop renewal or the others
                log.exception("a renewal callback failed")

    def _save_renewal(self, renewed: IdentityFile) -> None:
        """Persist a renewal where we may; the renewal itself never depends on it."""
        target = self._state_path or self._identity_path
        if target is None:
            return
        try:
            renewed.save(target)
        except OSError as exc:
            self.counters["renewal_save_failed"] = self.counters.get("renewal_save_failed", 0) + 1
            log.warning(
                "renewed certificate kept in memory only: cannot write %s (%s); "
                "pass a writable state path (UMBRA_IDENTITY_STATE) so restarts keep it",
                target,
                exc.strerror or exc,
            )
