"""The Umbranet clients on the async SDK directly: the same tests without the blocking facade.

`bench.paths.umbranet_client` drives the SDK through `umbranet.sdk.blocking`, which hands
every call to an event-loop thread and waits for it: two thread hand-offs per `sendall` or
`recv`. This module runs the same measurements (same command line, same JSON as `bench.rr`)
as coroutines on the SDK's own loop, so the difference between the two rows is the facade's
cost and this row is the SDK -> router -> SDK path itself.

    python -m bench.paths.umbranet_async_client latency --identity dialer.json --count 2000
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import rr
from bench.paths.umbranet_setup import SERVICES
from umbranet.aio.runtime import run
from umbranet.sdk import Context, Stream, UmbraError

__all__ = ["main"]

CONNECT_WARMUP = 5
CHUNK = 128 * 1024  # what bench.rr's blast sends per call


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--identity" not in args:
        print("bench.paths.umbranet_async_client: --identity FILE is required", file=sys.stderr)
        return 2
    i = args.index("--identity")
    identity = Path(args[i + 1])
    args = args[:i] + args[i + 2 :]
    routers: tuple[str, ...] | None = None
    if "--routers" in args:  # the mesh paths pin the dialer's router (comma-separated)
        j = args.index("--routers")
        routers = tuple(args[j + 1].split(","))
        args = args[:j] + args[j + 2 :]
    opts = rr.client_parser().parse_args(args)
    result = run(_measure(identity, opts, routers))
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok", True) and not result.get("errors") else 1


async def _measure(
    identity: Path, opts: Any, routers: tuple[str, ...] | None = None
) -> dict[str, Any]:
    # `connect`: what an application gets on its second and later dials to a host (each
    # stream opens inside the end-to-end session of the first, no handshake); `connect-first`:
    # what every first dial to a host costs (a full Noise XX handshake each time).
    sessions = opts.mode != "connect-first"
    async with Context.from_file(identity, routers=routers, session_streams=sessions) as ctx:
        if opts.mode == "latency":
            return await _latency(ctx, opts.count, opts.warmup, opts.size)
        if opts.mode in ("connect", "connect-first"):
            await _connect(ctx, CONNECT_WARMUP, opts.size)
            result = await _connect(ctx, opts.count, opts.size)
            return {**result, "mode": opts.mode}
        if opts.mode == "blast":
            return await _blast(ctx, opts.seconds, opts.streams, opts.min_bytes, opts.max_seconds)
        return await _probe(ctx, opts.wait, opts.size)


async def _dial(ctx: Context, service: str) -> Stream:
    try:
        return await ctx.dial(service)
    except UmbraError as exc:
        raise ConnectionError(f"{exc.code}: {exc.reason}") from exc


def _end(stream: Stream) -> None:
    # Half-close rather than Stream.close(): see UmbraConn.close in umbranet_client.py.
    stream.write_eof()


async def _latency(ctx: Context, count: int, warmup: int, size: int) -> dict[str, Any]:
    payload = b"r" * size
    stream = await _dial(ctx, SERVICES["echo"])
    samples: list[int] = []
    try:
        for i in range(warmup + count):
            t0 = time.perf_counter_ns()
            stream.write(payload)
            await stream.drain()
            await stream.readexactly(size)
            if i >= warmup:
                samples.append(time.perf_counter_ns() - t0)
    finally:
        _end(stream)
    return {"mode": "latency", "size": size, **rr.summarize(samples)}


async def _connect(ctx: Context, count: int, size: int) -> dict[str, Any]:
    payload = b"c" * size
    samples: list[int] = []
    in_session = 0  # dials that opened inside an existing session (shown in the JSON)
    for _ in range(count):
        t0 = time.perf_counter_ns()
        stream = await _dial(ctx, SERVICES["echo"])
        in_session += bool(stream.get_extra_info("in_session"))
        try:
            stream.write(payload)
            await stream.drain()
            await stream.readexactly(size)
        finally:
            _end(stream)
        samples.append(time.perf_counter_ns() - t0)
    return {"mode": "connect", "size": size, "in_session": in_session, **rr.summarize(samples)}


async def _blast(
    ctx: Context, seconds: float, streams: int, min_bytes: int, max_seconds: float
) -> dict[str, Any]:
    conns = [await _dial(ctx, SERVICES["sink"]) for _ in range(streams)]
    block = b"\0" * CHUNK
    per_stream = -(-min_bytes // streams) if min_bytes > 0 else 0
    t0 = time.monotonic()
    soft, hard = t0 + seconds, t0 + max(seconds, max_seconds)

    async def worker(stream: Stream) -> int:
        sent = 0
        while True:
            now = time.monotonic()
            if now >= soft and (sent >= per_stream or now >= hard):
                break
            stream.write(block)
            await stream.drain()
            sent += CHUNK
        stream.write_eof()
        return int.from_bytes(await stream.readexactly(8), "big")

    results = await asyncio.gather(*(worker(s) for s in conns), return_exceptions=True)
    elapsed = time.monotonic() - t0
    total = sum(r for r in results if isinstance(r, int))
    errors = [f"stream {i}: {r!r}" for i, r in enumerate(results) if not isinstance(r, int)]
    return {
        "mode": "blast",
        "streams": streams,
        "bytes": total,
        "seconds": elapsed,
        "bits_per_second": total * 8 / elapsed if elapsed > 0 else 0.0,
        "errors": errors,
    }


async def _probe(ctx: Context, wait: float, size: int) -> dict[str, Any]:
    deadline = time.monotonic() + wait
    tries = 0
    last = ""
    while True:
        tries += 1
        try:
            result = await _connect(ctx, 1, size)
            return {"mode": "probe", "ok": True, "tries": tries, "rt_us": result["p50_us"]}
        except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            return {"mode": "probe", "ok": False, "tries": tries, "error": last}
        await asyncio.sleep(0.2)


if __name__ == "__main__":
    raise SystemExit(main())
