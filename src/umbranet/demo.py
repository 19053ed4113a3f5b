"""The demo service of `umbra quickstart`: a tiny HTTP responder served dark, and its client.

The responder has no listening socket: it hosts the service through the SDK's listener and
answers each request with who the caller is, as proven by the overlay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os

from umbranet.sdk import Context, Stream

DEMO_SERVICE = "demo-web"


async def serve_demo(context: Context, service: str = DEMO_SERVICE) -> None:
    """Answer HTTP requests on `service` until cancelled."""
    tasks: set[asyncio.Task[None]] = set()
    async with context.listen(service) as listener:
        async for stream in listener:
            task = asyncio.get_running_loop().create_task(_answer(stream, service))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


async def _answer(stream: Stream, service: str) -> None:
    with contextlib.suppress(
        ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError
    ):
        head = await stream.readuntil(b"\r\n\r\n", limit=16384)
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        body = (
            json.dumps(
                {
                    "message": f"hello {stream.peer.name}, you reached {service} through Umbranet",
                    "request": request_line,
                    "peer": {"name": stream.peer.name, "spiffe_id": stream.peer.spiffe_id},
                    "host_listening_sockets": listening_sockets(),
                },
                indent=2,
            ).encode()
            + b"\n"
        )
        stream.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await stream.drain()
        stream.write_eof()
        await stream.read()


def listening_sockets() -> int | None:
    """How many listening TCP or bound UDP sockets this process holds (Linux /proc); the
    demo reports it so a user sees the host is dark. None where /proc is unavailable."""
    inodes = set()
    try:
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # the directory's own fd is gone already
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        count = 0
        for table in ("tcp", "tcp6", "udp", "udp6"):
            with open(f"/proc/self/net/{table}") as handle:
                for line in handle.readlines()[1:]:
                    fields = line.split()
                    if fields[9] in inodes and (table.startswith("udp") or fields[3] == "0A"):
                        count += 1
        return count
    except OSError:
        return None


async def fetch(context: Context, service: str = DEMO_SERVICE, path: str = "/") -> bytes:
    """GET `path` from an HTTP service through the overlay; returns the raw response."""
    stream = await context.dial(service)
    stream.write(f"GET {path} HTTP/1.1\r\nHost: {service}\r\nConnection: close\r\n\r\n".encode())
    stream.write_eof()
    response = await stream.read()
    stream.close()
    return response
