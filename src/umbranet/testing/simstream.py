"""Streams and listeners of simulated endpoints: a small byte API over a real `Circuit`.

A `SimStream` is what an application holds in the simulated network: `write`, `write_eof`,
`read` (whatever arrived so far), and how it ended (`ended`, a `StreamEnd` with the code).
While `reading` is on, what the circuit delivers is taken into the stream's inbox at once,
returning credit as a reading application would; `pause_reading()` stops that, so the
circuit's window fills and the sender stalls (a slow reader). Handlers (`echo`, `sink`,
`hold`) are the applications behind a `listen`; each is called after every change.

`eof` is true only after the peer's FIN arrived sealed (the FIN flag is bound into the AEAD,
so no router can forge it); a stream that ended any other way has `ended.code` saying why.
So a transfer cut short can never look finished.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from umbranet.proto.circuit import Circuit, State
from umbranet.proto.e2e import PeerIdentity
from umbranet.wire import ErrorCode

if TYPE_CHECKING:
    from umbranet.testing.simnodes import RouterLink, SimEndpoint

__all__ = ["Handler", "SimListener", "SimStream", "StreamEnd", "echo", "hold", "sink"]

_TAKE = 1 << 20


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """How a stream ended: `code` is an ErrorCode's machine code (`no_error` when both
    directions ended cleanly) or a dial failure's code (`dial_timeout`, ...)."""

    code: str
    reason: str
    by_peer: bool = True

    @property
    def clean(self) -> bool:
        return self.code == ErrorCode.NO_ERROR.code


Handler = Callable[["SimStream"], None]


class SimStream:
    """One end of one circuit, as an application sees it. See the module docstring."""

    def __init__(
        self, endpoint: SimEndpoint, link: RouterLink, service: str, circuit: Circuit
    ) -> None:
        self.endpoint = endpoint
        self.link = link
        self.service = service
        self.circuit = circuit
        self.opened = False  # the end-to-end handshake finished
        self.ended: StreamEnd | None = None
        self.reading = True
        self.inbox = bytearray()  # taken from the circuit, not yet `read`
        self.received = 0  # bytes taken from the circuit in all
        self.on_change: Handler | None = None
        self._eof_sent = False

    # -- the application's side ---------------------------------------------------------

    @property
    def peer(self) -> PeerIdentity | None:
        return self.circuit.peer

    @property
    def eof(self) -> bool:
        """The peer's sealed FIN arrived: it sent everything it meant to."""
        return self.circuit.remote_fin

    @property
    def finished(self) -> bool:
        """Both directions ended cleanly."""
        return self.ended is not None and self.ended.clean

    @property
    def writable(self) -> bool:
        return self.circuit.state is not State.CLOSED and not self._eof_sent

    @property
    def unsent(self) -> int:
        """Bytes written but waiting for the peer's credit."""
        return self.circuit.unsent_bytes

    @property
    def buffered(self) -> int:
        """Bytes that arrived but the application has not taken (while reading is paused)."""
        return self.circuit.readable_bytes

    def write(self, data: bytes) -> None:
        """Queue bytes; they leave as the peer's credit allows. ConnectionError once the
        stream is closed for writing (as the SDK's `Stream`)."""
        self.circuit.write(data)
        self.endpoint.flush(self.link, self.circuit)

    def write_eof(self) -> None:
        self._eof_sent = True
        self.circuit.write_eof()
        self.endpoint.flush(self.link, self.circuit)

    def read(self) -> bytes:
        """Everything that arrived and was not read yet."""
        self._take()
        data = bytes(self.inbox)
        self.inbox.clear()
        return data

    def reset(self, code: ErrorCode = ErrorCode.CANCELLED, reason: str = "reset by app") -> None:
        self.circuit.reset(code, reason)
        self.endpoint.flush(self.link, self.circuit)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True
        self._take()

    # -- the endpoint's side ------------------------------------------------------------

    def wake(self) -> None:
        """The circuit changed: take what arrived, note an end, run the handler."""
        if self.reading:
            self._take()
        circuit = self.circuit
        if circuit.state is State.CLOSED and self.ended is None and circuit.error is not None:
            error = circuit.error
            self.ended = StreamEnd(error.code.code, error.reason, error.by_peer)
            self.endpoint.note_end(self)
        if self.on_change is not None:
            self.on_change(self)

    def fail(self, code: str, reason: str) -> None:
        """The dial failed before the stream opened."""
        if self.ended is None:
            self.ended = StreamEnd(code, reason)
            self.endpoint.note_end(self)
            if self.on_change is not None:
                self.on_change(self)

    def _take(self) -> None:
        took = False
        while chunk := self.circuit.take(_TAKE):
            self.inbox += chunk
            self.received += len(chunk)
            took = True
        if took:
            self.endpoint.flush(self.link, self.circuit)  # the credit goes back


@dataclass(slots=True)
class SimListener:
    """A service an endpoint hosts: its binding, where it is bound, what came in."""

    service: str
    binding_id: int
    handler: Handler | None
    bound: list[str] = field(default_factory=list)  # routers that answered BIND_OK
    accepted: list[SimStream] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # failed accepts, binds


def echo(stream: SimStream) -> None:
    """Send back everything; end our direction after the peer ended its own."""
    data = stream.read()
    if data and stream.writable:
        stream.write(data)
    if stream.eof and stream.writable:
        stream.write_eof()


def sink(stream: SimStream) -> None:
    """Keep everything (in `inbox`); end our direction after the peer ended its own."""
    if stream.eof and stream.writable:
        stream.write_eof()


def hold(stream: SimStream) -> None:
    """A reader that never reads: the circuit's window fills and its sender stalls."""
    stream.pause_reading()
