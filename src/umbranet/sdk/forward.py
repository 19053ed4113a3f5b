"""Relaying an overlay stream and a local TCP connection, both ways, resets included.

Used wherever a stream meets a local socket: hosting a service at a local address (each stream
offloaded to e.g. 127.0.0.1:5432), the agent's intercepts, and command-line tools. Half-close
passes through (FIN for FIN), and so does a reset: an app whose service went away mid-flow sees
RST (ECONNRESET), as from a server that crashed, never a clean end of data it could mistake for
a complete response. The outcome says which side ended the flow and why, for the counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import Literal

from umbranet.proto.endpoint import DEFAULT_CORK_DELAY
from umbranet.sdk.errors import DialError, StreamReset
from umbranet.sdk.stream import Stream

__all__ = ["CHUNK", "Outcome", "offload", "parse_tcp_address", "relay", "reset_tcp"]

CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a relayed flow ended: byte counts and, if reset, by which side with what code."""

    sent: int
    received: int
    reset_by: Literal["", "overlay", "local"] = ""
    code: str = ""
    reason: str = ""
    refused: bool = False  # the overlay side was a 0-RTT dial refused after it returned


async def relay(
    stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Outcome:
    """Copy both ways with half-close until both directions ended or one side reset.

    A 0-RTT stream (`Stream.open_pending`) is read only once the local side spoke or the
    cork delay passed: reading first would send its OPEN bare, and the app's first bytes
    (an HTTP request, a database login) could not ride with it."""
    counts = [0, 0]
    spoke = asyncio.Event()

    async def local_to_overlay() -> None:
        while data := await reader.read(CHUNK):
            stream.write(data)
            spoke.set()
            counts[0] += len(data)
            await stream.drain()
        stream.write_eof()
        spoke.set()

    async def overlay_to_local() -> None:
        if stream.open_pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spoke.wait(), DEFAULT_CORK_DELAY)
        while data := await stream.read(CHUNK):
            writer.write(data)
            counts[1] += len(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(local_to_overlay()), loop.create_task(overlay_to_local())]
    closing = False
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        error = next((t.exception() for t in done if t.exception() is not None), None)
    except asyncio.CancelledError:
        stream.abort("the relay is shutting down")
        reset_tcp(writer)
        raise
    except GeneratorExit:  # the loop went away with the relay pending: await nothing
        closing = True
        raise
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            if not closing:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    if isinstance(error, StreamReset | DialError):  # before OSError: both are OSErrors too
        reset_tcp(writer)
        refused = isinstance(error, DialError)
        return Outcome(counts[0], counts[1], "overlay", error.code, error.reason, refused)
    if isinstance(error, OSError):
        stream.abort("the local connection was reset")
        reset_tcp(writer)
        return Outcome(counts[0], counts[1], "local", "local_reset", str(error))
    if error is not None:
        stream.abort("the relay failed")
        reset_tcp(writer)
        raise error
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Outcome(counts[0], counts[1])


def reset_tcp(writer: asyncio.StreamWriter) -> None:
    """Close with RST, not FIN (SO_LINGER 0), so the app sees its connection fail."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def offload(stream: Stream, host: str, port: int) -> None:
    """Forward one incoming stream to a local TCP address (refuses cleanly if it is down)."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        stream.abort(f"host address {host}:{port} refused: {exc.strerror or exc}")
        return
    await relay(stream, reader, writer)


def parse_tcp_address(address: str) -> tuple[str, int]:
    """`tcp://127.0.0.1:5432` or `127.0.0.1:5432` -> ("127.0.0.1", 5432)."""
    rest = address.removeprefix("tcp://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a tcp://HOST:PORT address: {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)
