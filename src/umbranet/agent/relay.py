"""Relaying bytes between a local TCP connection and an overlay stream, resets included.

Like `umbranet.sdk.forward.splice`, with the one difference the agent needs: a reset on one
side becomes a reset on the other. An app whose service went away mid-flow sees RST
(ECONNRESET), as from a server that crashed, never a clean end of data it could mistake for
a complete response; and the outcome says which side ended the flow and why, so the agent
can count it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import Literal

from umbranet.sdk import Stream, StreamReset

__all__ = ["CHUNK", "Outcome", "relay", "reset_tcp"]

CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a relayed flow ended: byte counts and, if reset, by which side with what code."""

    sent: int
    received: int
    reset_by: Literal["", "overlay", "local"] = ""
    code: str = ""
    reason: str = ""


async def relay(
    stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Outcome:
    """Copy both ways with half-close until both directions ended or one side reset."""
    counts = [0, 0]

    async def local_to_overlay() -> None:
        while data := await reader.read(CHUNK):
            stream.write(data)
            counts[0] += len(data)
            await stream.drain()
        stream.write_eof()

    async def overlay_to_local() -> None:
        while data := await stream.read(CHUNK):
            writer.write(data)
            counts[1] += len(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(local_to_overlay()), loop.create_task(overlay_to_local())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        error = next((t.exception() for t in done if t.exception() is not None), None)
    except asyncio.CancelledError:
        stream.abort("the agent is shutting down")
        reset_tcp(writer)
        raise
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if isinstance(error, StreamReset):
        reset_tcp(writer)
        return Outcome(counts[0], counts[1], "overlay", error.code, error.reason)
    if isinstance(error, OSError):
        stream.abort("the local connection was reset")
        reset_tcp(writer)
        return Outcome(counts[0], counts[1], "local", "local_reset", str(error))
    if error is not None:
        stream.abort("the agent failed")
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
