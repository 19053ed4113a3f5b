"""Context: an application's handle on the network, built from its identity file.

It talks to the controller for tickets and certificate renewal, keeps one long-lived link
per router, and opens streams over them. No listening socket anywhere: `listen` hosts a
service through outbound links only.

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
import functools
import logging
import os
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from umbranet.client.follow import follow_events, renew_at_half_life
from umbranet.clock import Clock, system_clock
from umbranet.pki import IdentityFile, PkiError
from umbranet.pki.tickets import Action
from umbranet.proto.circuit import Circuit
from umbranet.proto.e2e import DialerHandshake, LocalCredentials
from umbranet.proto.link import LinkTimers
from umbranet.sdk.connection import RouterConnection
from umbranet.sdk.errors import DialError, UmbraError
from umbranet.sdk.listener import Listener
from umbranet.sdk.posture import collect, report_interval
from umbranet.sdk.stream import Stream
from umbranet.wire import ErrorCode

log = logging.getLogger("umbranet.sdk")

CLOSE_TIMEOUT = 2.0
RENEWAL_RETRY = 30.0
"""Seconds between renewal attempts after one failed."""
POSTURE_FIRST_WAIT = 2.0
GRANT_CHECK_INTERVAL = 30.0
GRANT_REFRESH_BEFORE = 120.0  # seconds before a dial ticket expires


@dataclass(frozen=True, slots=True)
class Grant:
    """A ticket from the controller and the routers to present it at."""

    ticket: str
    expires_at: int
    routers: tuple[str, ...]
    http_rules: dict[str, Any] | None = None


class ControlPlane(Protocol):
    """What the SDK needs from the controller (see `umbranet.client.controller`)."""

    async def grant(self, service: str, action: str, port: int | None = None) -> Grant: ...

    async def renew(self) -> IdentityFile: ...

    async def report_posture(self, report: dict[str, Any]) -> bool: ...

    async def refresh_bundle(self) -> IdentityFile | None: ...

    def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]: ...

    async def aclose(self) -> None: ...


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
    ) -> None:
        self.identity = identity
        self.clock = clock
        self.link_timers = link_timers  # keepalive: how soon a silent router is given up
        self._identity_path = identity_path
        self._state_path = state_path
        self._control_factory = control or _default_control
        self._control = self._control_factory(identity)
        self._connections: dict[str, RouterConnection] = {}
        self._connecting: dict[str, asyncio.Task[RouterConnection]] = {}
        self._tickets: dict[tuple[str, str, int | None], Grant] = {}
        self._next_binding = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listeners: weakref.WeakSet[Listener] = weakref.WeakSet()
        self.epoch = 0
        self._epoch_moved = asyncio.Event()  # set, then replaced, at every new epoch
        self._renew = renew
        self._report_posture = report_posture
        self._posture_sent = asyncio.Event()
        self._posture_last: dict[str, Any] | None = None
        self._started = False
        self._closed = False
        self.counters: dict[str, int] = {}
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
            identity = _newest(identity, state)
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
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
        closing = asyncio.ensure_future(self._control.aclose())
        await asyncio.wait([closing], timeout=CLOSE_TIMEOUT)

    # -- the API ------------------------------------------------------------------------

    async def dial(self, service: str, timeout: float = 10.0, *, port: int | None = None) -> Stream:
        """An end-to-end encrypted stream to a host of `service` (its `port`, when the policy
        allows the service only on some ports; the host sees it as ``peer.port``).

        Raises DialError with the controller's, the router's or the host's code and reason.
        A ticket the router finds stale (access changed since it was issued) is replaced by
        a fresh one once; the controller decides again.
        """
        self._start()
        try:
            return await self._dial_once(service, timeout, fresh=False, port=port)
        except DialError as exc:
            if exc.code != ErrorCode.TICKET_STALE.code:
                raise
            return await self._dial_once(service, timeout, fresh=True, port=port)

    async def _dial_once(
        self, service: str, timeout: float, *, fresh: bool, port: int | None
    ) -> Stream:
        grant = await self.ticket(service, Action.DIAL, fresh=fresh, port=port)
        last: UmbraError = DialError("no_router", f"the controller named no router for {service}")
        for address in grant.routers:
            try:
                connection = await self.connection(address)
            except DialError as exc:
                last = exc
                continue
            handshake = DialerHandshake(service, grant.ticket, self.credentials(), port=port)
            circuit_id, opened = connection.open_circuit(
                service,
                functools.partial(Circuit.dial, service=service, handshake=handshake),
                timeout,
            )
            try:
                return await opened
            except asyncio.CancelledError:
                connection.cancel_circuit(circuit_id)
                raise
        raise last

    def listen(
        self, service: str, backlog: int = 128, *, ports: frozenset[int] | None = None
    ) -> Listener:
        """Host `service`: iterate the listener for incoming streams. Opens no port.

        With `ports`, only dialers whose ticket grants one of those service ports get through
        (the rest are refused with ``port_not_granted``); the stream's ``peer.port`` says which.
        """
        self._start()
        listener = Listener(self, service, backlog, ports)
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
            "counters": dict(self.counters),
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
            self._start()
            if self._report_posture and not self._posture_sent.is_set():
                # Posture-gated rules can only allow once the controller has our first report.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._posture_sent.wait(), POSTURE_FIRST_WAIT)
            try:
                grant = await self._control.grant(service, str(action), port)
            except UmbraError as exc:
                raise DialError(exc.code, exc.reason) from exc
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

    def new_binding_id(self) -> int:
        self._next_binding += 1
        return self._next_binding

    # -- internals ----------------------------------------------------------------------

    async def _connect(self, address: str) -> RouterConnection:
        connection = RouterConnection(
            self.identity, address, self.clock, self._lost, self.link_timers
        )
        await connection.connect()
        self._connections[address] = connection
        return connection

    def _lost(self, connection: RouterConnection) -> None:
        if self._connections.get(connection.address) is connection:
            del self._connections[connection.address]
        self.counters["router_links_lost"] = self.counters.get("router_links_lost", 0) + 1

    def _start(self) -> None:
        if self._started or self._closed:
            return
        self._started = True
        if self._renew:
            self._spawn(self._renew_forever())
        if self._report_posture:
            self._spawn(self._report_posture_forever())
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

    async def _report_posture_forever(self) -> None:
        """Report our posture at start, then whenever it changed (sampled periodically)."""
        interval = report_interval()
        try:
            while not self._closed:
                try:
                    report = await asyncio.to_thread(collect)
                    if report != self._posture_last:
                        await self._control.report_posture(report)
                        self._posture_last = report
                except Exception as exc:  # a posture report must never stop dials
                    self.counters["posture_report_failed"] = (
                        self.counters.get("posture_report_failed", 0) + 1
                    )
                    log.debug("posture report failed: %s", exc)
                # Tickets wait for the first attempt only, whatever its outcome.
                self._posture_sent.set()
                await asyncio.sleep(interval)
        finally:
            self._posture_sent.set()

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
        self._posture_last = None  # the certificate's age is part of posture: report again
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


def _newest(identity: IdentityFile, state: Path) -> IdentityFile:
    """The identity file's content, or the state file's when it is the same identity with a
    later certificate; a missing or unusable state file is ignored (renewals will rewrite it)."""
    try:
        saved = IdentityFile.load(state)
    except (OSError, ValueError, PkiError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("ignoring the identity state file %s: %s", state, exc)
        return identity
    if saved.spiffe_id != identity.spiffe_id:
        log.warning("ignoring %s: it holds %s, not %s", state, saved.spiffe_id, identity.spiffe_id)
        return identity
    # Ties go to the state file: only renewals write it, and a renewal in the same second as
    # the enrollment is newer. A later re-enrollment (a new identity file) wins by its date.
    if saved.certificate.not_valid_before_utc >= identity.certificate.not_valid_before_utc:
        return saved
    return identity


def _default_control(identity: IdentityFile) -> ControlPlane:
    from umbranet.sdk.control import ControllerPlane

    return ControllerPlane(identity)
