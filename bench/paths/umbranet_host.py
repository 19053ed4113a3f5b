"""The hosting end of the Umbranet path: echo and sink served by the SDK itself (namespace B).

Why not `umbra host --to tcp://127.0.0.1:7007`: that adds a local TCP hop and a splice on the
host side, and the benchmark is meant to measure SDK -> router -> SDK. This process hosts
`bench-echo` and `bench-sink` with `Context.listen` and speaks `bench.rr`'s protocols on the
streams directly (echo: send back what arrives; sink: count until EOF, answer the count as 8
bytes big-endian). It writes `--ready FILE` once both services are bound at the router and
runs until SIGTERM.

    python -m bench.paths.umbranet_host --identity host.json --ready ready.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from bench.paths.umbranet_setup import SERVICES
from umbranet.aio.runtime import run
from umbranet.sdk import Context, Listener, Stream, UmbraError

__all__ = ["main"]

READ_SIZE = 64 * 1024  # what bench.rr's TCP echo server reads per call too
Handler = Callable[[Stream], Awaitable[None]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.paths.umbranet_host")
    parser.add_argument("--identity", required=True, type=Path)
    parser.add_argument("--ready", required=True, type=Path)
    parser.add_argument("--routers", default="", help="pin the routers to bind at (a,b,...)")
    args = parser.parse_args(argv)
    routers = tuple(args.routers.split(",")) if args.routers else None
    try:
        run(_serve(args.identity, args.ready, routers))
    except UmbraError as exc:
        print(f"host failed: {exc.code}: {exc.reason}", file=sys.stderr)
        return 1
    return 0


async def _serve(identity: Path, ready: Path, routers: tuple[str, ...] | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    tasks: set[asyncio.Task[None]] = set()
    async with Context.from_file(identity, routers=routers) as context:
        echo = await context.listen(SERVICES["echo"]).start()
        sink = await context.listen(SERVICES["sink"]).start()
        acceptors = [
            loop.create_task(_accept(echo, _echo, tasks)),
            loop.create_task(_accept(sink, _sink, tasks)),
        ]
        _write_ready(ready)
        print(f"hosting {', '.join(sorted(SERVICES.values()))}", flush=True)
        await stop.wait()
        for task in [*acceptors, *tasks]:
            task.cancel()
        for listener in (echo, sink):
            await listener.close()


def _write_ready(path: Path) -> None:
    """Tell the harness both services are bound (a tiny write, once, before any traffic)."""
    path.write_text(json.dumps({"ok": True, "services": sorted(SERVICES.values())}))


async def _accept(listener: Listener, handler: Handler, tasks: set[asyncio.Task[None]]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        stream = await listener.accept()
        task = loop.create_task(_guarded(handler, stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def _guarded(handler: Handler, stream: Stream) -> None:
    try:
        await handler(stream)
    except (ConnectionError, UmbraError):
        stream.abort("benchmark host: stream failed")  # the client's own result says so
        return
    # Both handlers return after the peer's EOF, so ending our direction ends the circuit.
    # Not `Stream.close()`: with the SDK as of this writing, close() on a circuit that then
    # finishes recurses without end (notify -> _discard_inbound -> flush -> _dispatch) and,
    # when that happens inside a read callback, takes the whole link down.
    stream.write_eof()


async def _echo(stream: Stream) -> None:
    while data := await stream.read(READ_SIZE):
        stream.write(data)
        await stream.drain()


async def _sink(stream: Stream) -> None:
    total = 0
    while data := await stream.read(READ_SIZE):
        total += len(data)
    stream.write(total.to_bytes(8, "big"))
    await stream.drain()


if __name__ == "__main__":
    raise SystemExit(main())
