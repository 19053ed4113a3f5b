"""The simulated network's plumbing: carriers between nodes, their ends, machine timers.

A `Carrier` stands for what the shells get from TLS over TCP: an ordered, reliable byte
stream between two nodes. Each end is a `Port`; bytes written at one port wait in the other
port's `inbound` queue until their arrival time, and a partition holds them there (TCP
would retransmit them until the path heals). A `Timer` is the simulated twin of the asyncio
shells' `MachineTimer`: one per machine, re-armed after every input at `poll_timeout()`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from umbranet.clock import Deadline
from umbranet.wire import Frame, FrameDecoder

if TYPE_CHECKING:
    from umbranet.testing.simnet import SimNet

__all__ = ["Carrier", "Node", "Port", "Timer", "reads"]


class Node(Protocol):
    """A router or an endpoint, as the network sees it."""

    name: str
    alive: bool

    def receive(self, port: Port, data: bytes) -> None:
        """Bytes arrived at one of the node's ports (one read)."""

    def carrier_lost(self, port: Port) -> None:
        """The link behind `port` is gone (the far end closed it, or it broke)."""


class Port:
    """One end of a carrier, held by its node."""

    __slots__ = (
        "carrier",
        "decoder",
        "filters",
        "inbound",
        "name",
        "node",
        "open",
        "peer",
        "pump_at",
    )

    def __init__(self, carrier: Carrier, node: Node, name: str) -> None:
        self.carrier = carrier
        self.node = node
        self.name = name
        self.peer: Port = self
        self.open = True  # this end has neither closed the link nor learnt that it is gone
        # Bytes travelling towards this end: (arrival time, bytes), None for "the far end
        # closed after what came before".
        self.inbound: deque[tuple[float, bytes | None]] = deque()
        self.pump_at: float | None = None  # when delivery to this end is next scheduled
        self.filters: list[Callable[[Frame], bool]] = []  # frames to drop on arrival
        self.decoder = FrameDecoder()

    def __repr__(self) -> str:
        return f"Port({self.name})"


class Carrier:
    """The byte stream between two nodes, with its delay model and its faults."""

    def __init__(  # noqa: PLR0917
        self,
        a: Node,
        b: Node,
        latency: float,
        jitter: float,
        loss: float,
        rto: float,
        suffix: str = "",
    ) -> None:
        self.latency = latency  # one way, seconds
        self.jitter = jitter  # up to this much more, uniformly (seeded)
        self.loss = loss  # chance a write is lost once and arrives `rto` later
        self.rto = rto
        self.partitioned = False
        self.down = False
        self.a = Port(self, a, f"{a.name}->{b.name}{suffix}")
        self.b = Port(self, b, f"{b.name}->{a.name}{suffix}")
        self.a.peer, self.b.peer = self.b, self.a

    def joins(self, x: Node, y: Node) -> bool:
        ends = (self.a.node, self.b.node)
        return (ends[0] is x and ends[1] is y) or (ends[0] is y and ends[1] is x)

    def port_of(self, node: Node) -> Port:
        return self.a if self.a.node is node else self.b


class Timer:
    """One machine's timer: runs `fire` at the deadline armed last (re-arming replaces it)."""

    __slots__ = ("_at", "_fire", "_generation", "_net")

    def __init__(self, net: SimNet, fire: Callable[[], None]) -> None:
        self._net = net
        self._fire = fire
        self._generation = 0
        self._at: float | None = None

    @property
    def armed_at(self) -> float | None:
        return self._at

    def arm(self, deadline: Deadline | None) -> None:
        if deadline is None:
            self.cancel()
            return
        at = max(deadline.at, self._net.clock.mono)
        if at == self._at:
            return
        self._generation += 1
        self._at = at
        generation = self._generation
        self._net.schedule(at, lambda: self._fired(generation))

    def cancel(self) -> None:
        self._generation += 1
        self._at = None

    def _fired(self, generation: int) -> None:
        if generation == self._generation:
            self._at = None
            self._fire()


def reads(decoder: FrameDecoder, data: bytes) -> Iterator[list[Frame]]:
    """Feed `data` to `decoder` as the asyncio shells do (`get_buffer`, `buffer_updated`),
    one read at most a buffer's free space long, yielding each read's frames. Their payloads
    are views into the decoder's buffer, valid only until the next read: handle them before
    asking for more, as the shells do. (`FrameDecoder.feed`, which would do this in one
    call, hands out views that a later chunk of the same call has overwritten.)"""
    view = memoryview(data)
    while view:
        buffer = decoder.get_buffer(len(view))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        view = view[size:]
        yield decoder.buffer_updated(size)
