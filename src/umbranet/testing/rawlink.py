"""RawLink: a test client that speaks raw frames (or raw bytes) to a router over mutual TLS.

The SDK never sends a malformed frame, so it cannot show how a router treats one. A RawLink
can: it does the TLS handshake with whatever certificate a test gives it (or none), then
lets the test write any frames or bytes and read back decoded frames, so tests can prove
that bad input gets a clear error (GOAWAY, RESET, BIND_ERR with a code) and harms nobody
else. It never checks the router's identity: it is a probe, not an endpoint.

    async with await RawLink.open(router.address, identity) as raw:
        await raw.hello()
        raw.send(FrameType.DIAL, 2, encode_control({...}))
        frame = await raw.expect(FrameType.RESET)
        code, reason = raw.error(frame)
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import Self

from umbranet.aio.tls import load_identity
from umbranet.pki import IdentityFile
from umbranet.wire import (
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameType,
    encode_control,
    encode_header,
)
from umbranet.wire.control import decode_error

__all__ = ["LinkClosed", "RawLink", "client_context"]

# Long enough for a loaded CI machine; tests never rely on it to pass, only to fail cleanly.
DEFAULT_TIMEOUT = 10.0


class LinkClosed(Exception):
    """The router closed the link (or TLS failed) while a test waited for a frame."""

    def __init__(self, frames: list[Frame], error: BaseException | None) -> None:
        super().__init__(f"link closed after {len(frames)} unread frames ({error!r})")
        self.frames = frames
        self.error = error


def client_context(identity: IdentityFile | None) -> ssl.SSLContext:
    """A TLS 1.3 client context presenting `identity` (or no certificate at all).

    The router's certificate is not verified: a probe must be able to reach a router even
    when the test hands it credentials from another network.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if identity is not None:
        load_identity(context, identity)
    return context


class RawLink:
    """One raw connection to a router. Build with `RawLink.open` or `RawLink.open_plain`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        # Accept anything the wire allows so the probe can observe oversized frames too.
        self._decoder = FrameDecoder(max_payload=MAX_PAYLOAD)
        self._frames: deque[Frame] = deque()
        self.closed = False
        self.close_error: BaseException | None = None

    @classmethod
    async def open(
        cls, address: str, identity: IdentityFile | None, timeout: float = DEFAULT_TIMEOUT
    ) -> Self:
        """TLS to the router at host:port presenting `identity` (None: no certificate).

        With TLS 1.3 the client finishes its handshake before the server checks the client
        certificate, so a refused certificate shows up as a closed link on the first read.
        """
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, int(port), ssl=client_context(identity), server_hostname=host
            ),
            timeout,
        )
        return cls(reader, writer)

    @classmethod
    async def open_plain(cls, address: str, timeout: float = DEFAULT_TIMEOUT) -> Self:
        """Plain TCP to the router's TLS port (for garbage-on-the-port tests)."""
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
        return cls(reader, writer)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- sending --------------------------------------------------------------------------

    def send(self, ftype: int, circuit: int, payload: bytes = b"", flags: int = 0) -> None:
        """Write one frame; any type, flags and payload size (the header is not checked)."""
        self._writer.write(encode_header(ftype, circuit, len(payload), flags) + payload)

    def send_bytes(self, data: bytes) -> None:
        """Write raw bytes, framed or not."""
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    async def hello(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """Say HELLO as an endpoint and return the router's HELLO."""
        self.send(FrameType.HELLO, 0, encode_control({"v": PROTOCOL_VERSION, "role": "endpoint"}))
        return await self.expect(FrameType.HELLO, timeout=timeout)

    # -- receiving ------------------------------------------------------------------------

    async def recv(self, timeout: float = DEFAULT_TIMEOUT) -> Frame:
        """The next frame (payload copied); LinkClosed if the link ends first."""
        while not self._frames:
            if self.closed:
                raise LinkClosed([], self.close_error)
            await self._fill(timeout)
        return self._frames.popleft()

    async def expect(
        self, ftype: int, circuit: int | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Frame:
        """The next frame of type `ftype` (on `circuit` if given), skipping others."""
        while True:
            frame = await self.recv(timeout)
            if frame.type == ftype and (circuit is None or frame.circuit == circuit):
                return frame

    async def read_until_closed(self, timeout: float = DEFAULT_TIMEOUT) -> list[Frame]:
        """Every frame until the router closes the link (raises TimeoutError if it never does)."""
        frames: list[Frame] = []
        while True:
            try:
                frames.append(await self.recv(timeout))
            except LinkClosed:
                return frames

    @staticmethod
    def error(frame: Frame) -> tuple[ErrorCode, str]:
        """The code and reason of a GOAWAY, RESET or BIND_ERR frame."""
        return decode_error(frame.payload)

    # -- lifecycle ------------------------------------------------------------------------

    async def aclose(self) -> None:
        self.closed = True
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 2)

    def abort(self) -> None:
        """Drop the connection without a TLS close_notify."""
        self.closed = True
        self._writer.transport.abort()

    def pause_reading(self) -> None:
        """Stop reading the socket (a peer that never reads: the router must buffer)."""
        self._writer.transport.pause_reading()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        self._writer.transport.resume_reading()  # type: ignore[attr-defined]

    # -- internals ------------------------------------------------------------------------

    async def _fill(self, timeout: float) -> None:
        try:
            data = await asyncio.wait_for(self._reader.read(1 << 20), timeout)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            data, self.close_error = b"", exc
        if not data:
            self.closed = True
            return
        for frame in self._decoder.feed(data):
            self._frames.append(Frame(frame.type, frame.flags, frame.circuit, bytes(frame.payload)))
