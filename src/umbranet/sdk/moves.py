"""SessionMover: the asyncio shell that moves an endpoint's streams to another router when
a router on their path dies (the sans-IO table is `proto.sessions.Sessions`).

Every `RouterConnection` of a `Context` shares one mover. When a connection reports that a
stream's path failed (`SessionDetached`), the stream only pauses: its reads wait, its writes
queue until `drain` holds the application back. A dialer's mover asks the context for
another path (`find_path`: a live router link that offers the service, and a current dial
ticket) and resumes the session there; the host side waits for the dialer's RESUME, which
any of its router links may bring (their bindings' CONNECTs go through `accept`). A stream
that finds no path within `deadline` seconds raises `StreamReset("resume_timeout")`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from umbranet.aio.driver import MachineTimer
from umbranet.clock import Clock
from umbranet.proto.circuit import Circuit, State
from umbranet.proto.e2e import HostHandshake
from umbranet.proto.sessions import DEFAULT_RESUME_DEADLINE, Sessions
from umbranet.sdk.errors import UmbraError
from umbranet.wire import Frame

if TYPE_CHECKING:
    from umbranet.sdk.connection import RouterConnection

__all__ = ["FindPath", "SessionMover"]

log = logging.getLogger("umbranet.sdk")

# Another path for a detached dialer stream: (a live router connection, a dial ticket).
FindPath = Callable[[Circuit], Awaitable["tuple[RouterConnection, str]"]]
# How long one resume attempt may wait for the host's answer before trying again.
RESUME_DIAL_TIMEOUT = 5.0


class SessionMover:
    """Moves paused streams to new paths; see the module docstring."""

    def __init__(
        self,
        clock: Clock,
        find_path: FindPath | None,
        *,
        deadline: float = DEFAULT_RESUME_DEADLINE,
        dial_timeout: float = RESUME_DIAL_TIMEOUT,
    ) -> None:
        self.sessions = Sessions(deadline=deadline)
        self.dial_timeout = dial_timeout
        self._clock = clock
        self._find_path = find_path
        self._timer: MachineTimer | None = None
        self._moving: set[int] = set()  # id(circuit) with an attempt being prepared
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- for RouterConnection -------------------------------------------------------------

    def opened(self, circuit: Circuit) -> None:
        self.sessions.opened(circuit)

    def accept(
        self, circuit_id: int, connect: Frame, handshake: HostHandshake, window: int
    ) -> Circuit:
        return self.sessions.accept(circuit_id, connect, handshake, window, self._clock.now())

    def detached(self, circuit: Circuit) -> None:
        """A stream's path failed: wait (and, as its dialer, look for another path)."""
        self.sessions.detached(circuit, self._clock.now())
        self._wake(circuit)
        self._kick()

    def resumed(self, circuit: Circuit) -> None:
        self.sessions.resumed(circuit)
        log.info(
            "stream resumed service=%s circuit=%d moves=%d",
            circuit.service,
            circuit.id,
            circuit.resumes,
        )
        self._arm()

    def statistics(self) -> dict[str, int]:
        return self.sessions.statistics()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()

    # -- internals ----------------------------------------------------------------------

    def _kick(self) -> None:
        for circuit in self.sessions.due(self._clock.now()):
            if self._find_path is None or id(circuit) in self._moving:
                continue
            self._moving.add(id(circuit))
            task = asyncio.get_running_loop().create_task(self._move(circuit))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._arm()

    async def _move(self, circuit: Circuit) -> None:
        try:
            assert self._find_path is not None
            connection, ticket = await self._find_path(circuit)
        except (UmbraError, OSError) as exc:
            log.info("no path yet for service=%s: %s", circuit.service, exc)
            return  # the next retry tick tries again, until the deadline
        finally:
            self._moving.discard(id(circuit))
        if circuit.state is State.DETACHED:
            connection.resume_circuit(circuit, ticket, self.sessions.nonce(), self.dial_timeout)

    def _on_timer(self) -> None:
        for circuit in self.sessions.handle_timeout(self._clock.now()):
            log.warning(
                "stream ended service=%s: no path within the resume deadline", circuit.service
            )
            self._wake(circuit)
        self._kick()

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = MachineTimer(self._clock, self._on_timer)
        self._timer.arm(self.sessions.poll_timeout())

    @staticmethod
    def _wake(circuit: Circuit) -> None:
        notify = getattr(circuit.owner, "notify", None)
        if notify is not None:
            notify()
