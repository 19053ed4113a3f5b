"""Splicing an overlay stream with a local TCP connection, in both directions, with half-close.

Used to host a service at a local address (the host side offloads each stream to e.g.
127.0.0.1:5432) and by command-line tools; the agent builds on the same function.
"""

from __future__ import annotations

import asyncio
import contextlib

from umbranet.sdk.stream import Stream

CHUNK = 64 * 1024


async def splice(
    stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Copy both ways until both directions ended; a reset on either side ends both."""

    async def local_to_overlay() -> None:
        while data := await reader.read(CHUNK):
            stream.write(data)
            await stream.drain()
        stream.write_eof()

    async def overlay_to_local() -> None:
        while data := await stream.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    tasks = [asyncio.ensure_future(local_to_overlay()), asyncio.ensure_future(overlay_to_local())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await asyncio.gather(*tasks)
    except (ConnectionError, OSError):
        stream.abort("local side failed")
    finally:
        for task in tasks:
            task.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def offload(stream: Stream, host: str, port: int) -> None:
    """Forward one incoming stream to a local TCP address (refuses cleanly if it is down)."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        stream.abort(f"host address {host}:{port} refused: {exc.strerror or exc}")
        return
    await splice(stream, reader, writer)


def parse_tcp_address(address: str) -> tuple[str, int]:
    """`tcp://127.0.0.1:5432` or `127.0.0.1:5432` -> ("127.0.0.1", 5432)."""
    rest = address.removeprefix("tcp://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a tcp://HOST:PORT address: {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)
