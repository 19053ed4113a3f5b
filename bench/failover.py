"""Failover and in-session dial figures for the SDK on loopback (issue 11, items 5 and 6).

- failover: the longest pause an application reading an echoed transfer sees when the router
  under its stream crashes (its links reset, as when the process is killed) and the stream
  moves to the other router; median of `--runs` (>= 5 for the report);
- dial + first round trip: `ctx.dial(svc)` plus one byte echoed, with a full Noise XX
  handshake per dial, and opened inside the existing session with the byte riding as early
  data (0-RTT); medians of `--dials`.

In-process routers with real TLS on 127.0.0.1, one process, so the figures compare the two
ways of dialing and show the failover pause; `python -m bench` measures paths across
namespaces. Run: `python -m bench.failover [--runs 5] [--dials 200] [--mib 16]`; every loop
is bounded by its count and every wait by a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from umbranet.aio.runtime import run
from umbranet.router import Router, RouterConfig
from umbranet.sdk import Context, Stream
from umbranet.testing import LocalNetwork

WAIT = 30.0


async def _echo(listener: Any) -> None:
    async def one(stream: Stream) -> None:
        try:
            while data := await stream.read(1 << 20):
                stream.write(data)
                await stream.drain()
            stream.write_eof()
        except ConnectionError:
            pass

    tasks: set[asyncio.Task[None]] = set()
    async for stream in listener:
        task = asyncio.get_running_loop().create_task(one(stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def _network() -> LocalNetwork:
    network = LocalNetwork()
    network.service("echo", dial=("client",), bind=("server",))
    return network


def _crash(router: Router) -> None:
    """Stop accepting and reset every link at once (what the kernel does for a killed
    process); the router object is left for its context manager to close."""
    router.stop_accepting()
    for link in list(router._links):
        if link.transport is not None:
            link.transport.abort()


async def failover_once(mib: int) -> float:
    network = _network()
    async with (
        Router(RouterConfig(network.identity("r1", kind="router"), port=0)) as r1,
        Router(RouterConfig(network.identity("r2", kind="router"), port=0)) as r2,
    ):
        network.routers.extend([r1.address, r2.address])
        host = Context(
            network.identity("web", attributes=("server",)), control=network.control, renew=False
        )
        client = Context(
            network.identity("alice", attributes=("client",)), control=network.control, renew=False
        )
        async with host, client:
            listener = await host.listen("echo").start()
            server = asyncio.get_running_loop().create_task(_echo(listener))
            stream = await client.dial("echo")
            size, chunk = mib << 20, 1 << 16
            payload = bytes(chunk)

            async def send() -> None:
                for offset in range(0, size, chunk):
                    stream.write(payload)
                    await stream.drain()
                    if offset == size // 3 // chunk * chunk:
                        _crash(r1 if stream.get_extra_info("router") == "r1" else r2)
                stream.write_eof()

            sender = asyncio.get_running_loop().create_task(send())
            got, longest, last = 0, 0.0, time.perf_counter()
            while data := await asyncio.wait_for(stream.read(1 << 20), WAIT):
                now = time.perf_counter()
                longest = max(longest, now - last)
                last = now
                got += len(data)
            await sender
            server.cancel()
            if got != size or stream.get_extra_info("resumes") != 1:
                raise RuntimeError(f"failover run broken: {got} of {size} bytes")
            return longest


async def dials(count: int) -> tuple[list[float], list[float]]:
    network = _network()
    async with Router(RouterConfig(network.identity("r1", kind="router"), port=0)) as r1:
        network.routers.append(r1.address)
        host = Context(
            network.identity("web", attributes=("server",)), control=network.control, renew=False
        )
        client = Context(
            network.identity("alice", attributes=("client",)), control=network.control, renew=False
        )
        async with host, client:
            listener = await host.listen("echo").start()
            server = asyncio.get_running_loop().create_task(_echo(listener))
            full: list[float] = []
            early: list[float] = []
            for i in range(2 * count + 1):
                in_session = i % 2 == 0 and i > 0
                if not in_session:
                    client._mover.sessions.forget("echo")  # the next dial runs Noise XX
                started = time.perf_counter()
                stream = await asyncio.wait_for(
                    client.dial("echo", early_data=b"x" if in_session else b""), WAIT
                )
                if not in_session:
                    stream.write(b"x")
                await asyncio.wait_for(stream.readexactly(1), WAIT)
                took = time.perf_counter() - started
                if i > 0:
                    (early if in_session else full).append(took)
                stream.write_eof()
                await asyncio.wait_for(stream.read(), WAIT)
            server.cancel()
            return full, early


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.failover")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dials", type=int, default=200)
    parser.add_argument("--mib", type=int, default=16)
    args = parser.parse_args(argv)
    pauses = [run(failover_once(args.mib)) for _ in range(args.runs)]
    full, early = run(dials(args.dials))  # uvloop, as the shells run
    print(
        f"failover pause (router crash, {args.mib} MiB echo): median "
        f"{statistics.median(pauses) * 1000:.1f} ms of {args.runs} runs "
        f"({', '.join(f'{p * 1000:.0f}' for p in pauses)} ms)"
    )
    f, e = statistics.median(full), statistics.median(early)
    print(f"dial + first round trip, Noise XX: median {f * 1e6:.0f} us ({len(full)} dials)")
    print(
        f"dial + first round trip, in session (0-RTT): median {e * 1e6:.0f} us "
        f"({len(early)} dials); ratio {e / f:.2f}"
    )


if __name__ == "__main__":
    main()
