"""`sdk.forward.relay` and 0-RTT streams: the local side's first bytes are written before the
stream is read, so they ride with the OPEN (a read that finds nothing would send it bare)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from umbranet.sdk import forward
from umbranet.sdk.forward import relay


class RecordingStream:
    """Stands in for a 0-RTT Stream: records the order of writes and reads; echoes."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.open_pending = True
        self._echo = bytearray()
        self._eof = False

    def write(self, data: bytes) -> None:
        self.calls.append("write")
        self.open_pending = False  # the OPEN left with these bytes
        self._echo += data

    async def drain(self) -> None:
        pass

    def write_eof(self) -> None:
        self._eof = True

    async def read(self, n: int) -> bytes:
        self.calls.append("read")
        self.open_pending = False  # a read that must wait sends the OPEN bare
        data, self._echo = bytes(self._echo[:n]), self._echo[n:]
        return data

    def abort(self, reason: str) -> None:
        self.calls.append("abort")


def test_the_local_side_s_first_bytes_are_written_before_the_stream_is_read(
    arun: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cork delay made long: the bytes come a loop turn after the relay started, and
    # the test must not depend on how fast that turn is.
    monkeypatch.setattr(forward, "DEFAULT_CORK_DELAY", 30.0)

    async def main() -> tuple[list[str], bytes]:
        app, agent = socket.socketpair()
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        loop.call_soon(reader.feed_data, b"GET / HTTP/1.1\r\n\r\n")
        loop.call_soon(reader.feed_eof)
        _, writer = await asyncio.open_connection(sock=agent)
        stream = RecordingStream()
        await relay(stream, reader, writer)  # type: ignore[arg-type]
        app.setblocking(False)
        answer = await asyncio.wait_for(loop.sock_recv(app, 1024), 10)
        app.close()
        return stream.calls, answer

    calls, answer = arun(main())
    assert calls[0] == "write"  # the request went first: it rode with the OPEN
    assert answer == b"GET / HTTP/1.1\r\n\r\n"
