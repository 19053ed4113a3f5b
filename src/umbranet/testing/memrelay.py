"""Two SDK Streams joined in memory through one relay hop that a test may make malicious.

The relay does to circuit frames what a router can do: pass them on, drop them, hold them,
or send frames of its own (a RESET with any code and reason). Everything above it is the
real code: `Circuit` machines, `Stream`, and whatever the test builds on streams
(`sdk.forward.relay` to real loopback sockets, say). So a test shows what an application
sees when a router on the path misbehaves, without a router, TLS or timing.

    async with MemoryCircuit(dialer_handshake, host_handshake, hook=truncate) as (a, b):
        ...
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from umbranet.proto.circuit import Circuit, Opened
from umbranet.proto.e2e import DialerHandshake, HostHandshake
from umbranet.proto.flow import DEFAULT_WINDOW
from umbranet.proto.peer_cache import verified_svid
from umbranet.sdk.stream import Stream
from umbranet.wire import Frame, FrameDecoder, FrameType, decode_control, encode_control
from umbranet.wire.codes import ErrorCode
from umbranet.wire.control import encode_error
from umbranet.wire.frames import encode_frame

__all__ = ["Direction", "Hook", "MemoryCircuit", "TruncateAndReset", "reset_frame"]

Direction = Literal["to_host", "to_dialer"]
# Called for each frame in flight; returns what to deliver instead, each frame with its way
# (none: dropped), so a hook can answer both ends as a router would.
Hook = Callable[[Direction, Frame], list[tuple[Direction, Frame]]]
_DIALER_ID, _HOST_ID = 1, 2


def reset_frame(code: ErrorCode, reason: str) -> Frame:
    """A RESET as any router could send it (the circuit id is set on delivery)."""
    return Frame(FrameType.RESET, 0, 0, encode_error(code, reason))


class TruncateAndReset:
    """A malicious relay: passes `keep` bytes of DATA each way, then drops everything and
    tells both ends RESET with `code` (NO_ERROR by default: "all done, nothing wrong")."""

    def __init__(self, keep: int, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        self.keep = keep
        self.code = code
        self.reason = reason
        self.passed: dict[Direction, int] = {"to_host": 0, "to_dialer": 0}
        self.cut = False

    def __call__(self, direction: Direction, frame: Frame) -> list[tuple[Direction, Frame]]:
        if self.cut:
            return []
        if frame.type == FrameType.DATA:
            if self.passed[direction] + len(frame.payload) > self.keep:
                self.cut = True
                reset = reset_frame(self.code, self.reason)
                return [("to_host", reset), ("to_dialer", reset)]
            self.passed[direction] += len(frame.payload)
        return [(direction, frame)]


class _Connection:
    """What a Stream asks of its RouterConnection, answered by the memory relay."""

    name = "memory-relay"

    def __init__(self, relay: MemoryCircuit, side: Literal["dialer", "host"]) -> None:
        self._relay = relay
        self._side = side

    def flush(self, circuit: Circuit) -> None:
        self._relay.flush(self._side)

    def link_blocked(self) -> asyncio.Future[None] | None:
        return None


class MemoryCircuit:
    """A dialer and a host circuit with `hook` between them; yields their two Streams."""

    def __init__(
        self,
        dialer: DialerHandshake,
        host: HostHandshake,
        *,
        hook: Hook | None = None,
        window: int = DEFAULT_WINDOW,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._hook = hook
        self._clock = clock
        self.service = dialer.service
        self.dialer = Circuit.dial(_DIALER_ID, self.service, dialer, window=window)
        (dial,) = self._decode(self.dialer)
        creds = dialer.credentials
        fields = {
            "service": self.service,
            "binding": 1,
            "ticket": dialer.ticket,
            # Who the router would announce: the identity the dialer's certificate names.
            "dialer": str(verified_svid(creds.cert_pem, creds.bundle, clock()).spiffe_id),
            "window": window,
        }
        connect = encode_frame(
            FrameType.CONNECT, _HOST_ID, encode_control(fields, decode_control(dial.payload).blob)
        )
        (connect_frame,) = FrameDecoder().feed(connect)
        connect_frame = Frame(FrameType.CONNECT, 0, _HOST_ID, bytes(connect_frame.payload))
        self.host = Circuit.accept(_HOST_ID, connect_frame, host, window=window)
        self._circuits = {"dialer": self.dialer, "host": self.host}
        self._connections = {
            "dialer": _Connection(self, "dialer"),
            "host": _Connection(self, "host"),
        }
        self.streams: dict[str, Stream] = {}
        self._queue: deque[tuple[str, Frame]] = deque()
        self._scheduled = False
        self._opened: asyncio.Future[None] | None = None

    async def __aenter__(self) -> tuple[Stream, Stream]:
        self._opened = asyncio.get_running_loop().create_future()
        self.flush("host")
        await asyncio.wait_for(asyncio.shield(self._opened), 10.0)
        return self.streams["dialer"], self.streams["host"]

    async def __aexit__(self, *exc_info: object) -> None:
        for stream in self.streams.values():
            stream.abort("test over")

    # -- the relay ------------------------------------------------------------------------

    def flush(self, side: str) -> None:
        """Take what `side`'s circuit queued and put it in flight through the hook."""
        direction: Direction = "to_host" if side == "dialer" else "to_dialer"
        for frame in self._decode(self._circuits[side]):
            for way, out in self._hook(direction, frame) if self._hook else [(direction, frame)]:
                self._queue.append(("host" if way == "to_host" else "dialer", out))
        if self._queue and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._deliver)

    def _deliver(self) -> None:
        self._scheduled = False
        # Bounded per turn, like a router's fair share of the loop; the rest goes next turn.
        for _ in range(256):
            if not self._queue:
                return
            side, frame = self._queue.popleft()
            circuit = self._circuits[side]
            circuit.handle_frame(
                Frame(frame.type, frame.flags, circuit.id, frame.payload), self._clock()
            )
            self.flush(side)
            self._dispatch(side)
        if self._queue and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._deliver)

    def _dispatch(self, side: str) -> None:
        circuit = self._circuits[side]
        while (event := circuit.poll_event()) is not None:
            if isinstance(event, Opened) and side not in self.streams:
                connection: Any = self._connections[side]
                self.streams[side] = Stream(connection, circuit, self.service)
                if len(self.streams) == 2 and self._opened and not self._opened.done():
                    self._opened.set_result(None)
        stream = self.streams.get(side)
        if stream is not None:
            stream.notify()

    @staticmethod
    def _decode(circuit: Circuit) -> list[Frame]:
        buffers = circuit.poll_transmit()
        if not buffers:
            return []
        frames = FrameDecoder().feed(b"".join(buffers))
        return [Frame(f.type, f.flags, f.circuit, bytes(f.payload)) for f in frames]
