"""Listener: host a service with no listening socket.

The listener asks the controller for a bind ticket, presents it to every router the
controller names (BIND), and keeps those bindings alive: it renews the ticket before it
expires and re-binds after a link drops. Dialers arrive as CONNECT frames on those outbound
links; each becomes a Stream once the dialer proved its identity in the handshake.

When the policy has HTTP rules for the service, the bind grant carries them and each stream is
a `GatedStream`: the application reads only requests those rules allow for that dialer. Every
fresh bind ticket (after each epoch bump) brings the rules in force.

Each dialer's ticket is checked again here, against what only the host knows: it must not be
older than the newest revocation epoch this host heard of (from the controller's events or
its own bind ticket), it must be bound to the dialer's certificate once the controller binds
tickets (seen from our own bind ticket), and, when the listener names the `ports` it serves,
it must grant one of them.

Several hosts of one service: each listener may say how the routers choose between them
(`weight`: its share of dials under the ``weighted`` strategy and of load under ``smart``;
`precedence`: ``primary`` hosts take every dial while one is up, a ``standby`` only when no
primary is), carried on every BIND; `router/terminators.py` has the rules. Every BIND also
carries the context's host instance id, which names this process to the routers: streams a
dialer opens inside its session with this process (and its resumes) come here and to no
other process of the service, not even one of the same identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from umbranet.pki.tickets import Action
from umbranet.policy import HttpFragment, PolicyError
from umbranet.policy.http_gate import GateStop
from umbranet.proto.e2e import HostHandshake, ticket_epoch, ticket_key_binding
from umbranet.proto.text import printable
from umbranet.sdk.errors import BindError, DialError, UmbraError
from umbranet.sdk.http_gate import GatedStream
from umbranet.sdk.stream import Stream
from umbranet.wire import ErrorCode

if TYPE_CHECKING:
    from umbranet.proto.circuit import Circuit
    from umbranet.sdk.connection import RouterConnection
    from umbranet.sdk.context import Context

log = logging.getLogger("umbranet.sdk")

PRECEDENCE = {"primary": 0, "standby": 1, "backup": 2}
"""Names of precedence ranks; any rank 0-9 may be given as a number (lower goes first)."""
MAX_WEIGHT = 1000  # what routers accept on BIND
MAX_PRECEDENCE = 9


def precedence_rank(precedence: str | int | None) -> int | None:
    """The BIND rank for a precedence name or number (None: the router's default, primary).
    A value routers would refuse is the caller's mistake: ValueError, at `listen`."""
    if precedence is None:
        return None
    if isinstance(precedence, str):
        if precedence not in PRECEDENCE:
            names = ", ".join(PRECEDENCE)
            raise ValueError(f"precedence must be one of {names} or 0-{MAX_PRECEDENCE}")
        return PRECEDENCE[precedence]
    if isinstance(precedence, bool) or not 0 <= precedence <= MAX_PRECEDENCE:
        raise ValueError(f"precedence must be one of 0-{MAX_PRECEDENCE}")
    return int(precedence)


def check_weight(weight: int | None) -> int | None:
    if weight is None:
        return None
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"weight must be an integer 0-{MAX_WEIGHT}")
    return weight


class Listener:
    """`async for stream in ctx.listen("svc")`; or `await listener.accept()`."""

    def __init__(
        self,
        context: Context,
        service: str,
        backlog: int = 128,
        ports: frozenset[int] | None = None,
        *,
        weight: int | None = None,
        precedence: str | int | None = None,
    ) -> None:
        self.service = service
        self.ports = ports
        self.weight = check_weight(weight)
        self.precedence = precedence_rank(precedence)
        self._context = context
        self._backlog = backlog
        self._queue: asyncio.Queue[Stream] = asyncio.Queue()
        self._ticket = ""
        self._ticket_expires = 0
        self._ticket_epoch = 0
        self._bound_tickets = False
        self._bindings: dict[RouterConnection, int] = {}
        self._changed = asyncio.Event()
        self._ready = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._http_rules: HttpFragment | None = None
        self.counters: dict[str, int] = {}

    async def start(self) -> Listener:
        """Bind at the routers; returns once bound at least once (or raises BindError)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._keep_bound())
        await asyncio.shield(self._ready)
        return self

    async def accept(self) -> Stream:
        """The next dialer's stream (the dialer is authenticated and authorized)."""
        if self._task is None or not self._ready.done():
            await self.start()
        else:
            # Bound already: what `start` would say, without a shielded wait per stream.
            self._ready.result()
        return await self._queue.get()

    def __aiter__(self) -> Listener:
        return self

    async def __anext__(self) -> Stream:
        if self._closed:
            raise StopAsyncIteration
        return await self.accept()

    async def __aenter__(self) -> Listener:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop hosting: unbind everywhere; streams already accepted keep going."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=2.0)
        for connection, binding_id in self._bindings.items():
            connection.unbind(binding_id)
        self._bindings.clear()

    def as_socket(self) -> socket.socket:
        """A listening Unix socket (no network port) on which each accepted stream arrives as
        a connection, for server libraries that take a socket; `socket_bridge` is then the
        `umbranet.sdk.socket_bridge.ListenerBridge` (``peer_of``, ``statistics``, ``aclose``)."""
        from umbranet.sdk.socket_bridge import listener_bridge

        self.socket_bridge = listener_bridge(self)
        return self.socket_bridge.socket

    @property
    def min_epoch(self) -> int:
        """Dial tickets from before this revocation epoch are refused here."""
        return max(self._context.epoch, self._ticket_epoch)

    @property
    def bound_routers(self) -> list[str]:
        return [c.name for c in self._bindings]

    # -- for RouterConnection -----------------------------------------------------------

    def handshake(self) -> HostHandshake:
        """The host side of a new dialer's handshake, proving us with the bind ticket."""
        return HostHandshake(
            self.service,
            self._ticket,
            self._context.credentials(),
            min_epoch=self.min_epoch,
            ports=self.ports,
            require_bound=self._bound_tickets,
        )

    def new_stream(self, connection: RouterConnection, circuit: Circuit) -> Stream:
        """The stream for a dialer who passed the handshake: gated if HTTP rules apply."""
        rules = self._http_rules
        if rules is None or not rules.grants:
            return Stream(connection, circuit, self.service)
        return GatedStream(connection, circuit, self.service, rules, self._http_stopped)

    def deliver(self, stream: Stream) -> None:
        if self._queue.qsize() >= self._backlog:
            self._count("backlog_full")
            stream.abort("listener backlog full")
            return
        self._queue.put_nowait(stream)

    def refused(self, code: str, reason: str) -> None:
        """A dialer failed the handshake (or a router sent a bad CONNECT)."""
        self._count(code)
        log.warning(
            "refused dialer service=%s code=%s reason=%s",
            printable(self.service),
            printable(code, 64),
            printable(reason),
        )

    def refresh(self) -> None:
        """Bind again now with a fresh ticket (the controller's epoch moved)."""
        self._changed.set()

    def binding_lost(self, connection: RouterConnection, code: str, reason: str) -> None:
        """The router dropped our binding there; try to bind again (the controller decides)."""
        self._count(code)
        self._bindings.pop(connection, None)
        self._changed.set()

    def connection_lost(self, connection: RouterConnection) -> None:
        self._bindings.pop(connection, None)
        self._changed.set()

    # -- internals ----------------------------------------------------------------------

    async def _keep_bound(self) -> None:
        """Bind everywhere; renew before expiry; re-bind after drops, with backoff."""
        backoff = 0.1
        while not self._closed:
            try:
                await self._bind_all()
                backoff = 0.1
                if not self._ready.done():
                    self._ready.set_result(None)
            except UmbraError as exc:
                self._count(exc.code)
                if not self._ready.done():
                    self._ready.set_exception(
                        exc if isinstance(exc, BindError) else BindError(exc.code, exc.reason)
                    )
                    return
                log.warning(
                    "listener %s: %s; retrying in %.1fs",
                    printable(self.service),
                    printable(exc),
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._changed.clear()
            refresh_in = max(1.0, (self._ticket_expires - time.time()) / 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), refresh_in)

    async def _bind_all(self) -> None:
        grant = await self._context.ticket(self.service, Action.BIND, fresh=True)
        self._ticket, self._ticket_expires = grant.ticket, grant.expires_at
        self._ticket_epoch = ticket_epoch(grant.ticket)
        # A controller that binds our ticket to our certificate binds dialers' tickets too.
        self._bound_tickets = bool(ticket_key_binding(grant.ticket))
        self._http_rules = self._rules_of(grant.http_rules)
        bound = 0
        last_error: UmbraError | None = None
        for address in grant.routers:
            try:
                connection = await self._context.connection(address)
                binding_id = self._bindings.get(connection) or self._context.new_binding_id()
                await connection.bind(self, binding_id, grant.ticket)
                self._bindings[connection] = binding_id
                bound += 1
            except (BindError, DialError) as exc:
                last_error = exc
            except TimeoutError:
                last_error = BindError("router_timeout", f"router {address} did not answer BIND")
        if bound == 0:
            raise last_error or BindError(ErrorCode.NO_TERMINATOR.code, "no router to bind at")

    def _rules_of(self, data: dict[str, Any] | None) -> HttpFragment | None:
        if data is None:
            return None
        try:
            return HttpFragment.from_json(data)
        except PolicyError as exc:
            # Fail closed: rules we cannot read must not turn into "no rules" (allow all).
            self._count("http_rules_malformed")
            raise BindError("http_rules_malformed", exc.reason) from exc

    def _http_stopped(self, stop: GateStop) -> None:
        self._count(stop.code)

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1
