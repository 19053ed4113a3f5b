"""A/B of round trips: router, host and client in one process on loopback, N echoes of 64 B
on one stream (``MODE=connect``: N x a new stream in the session + one echo + half-close;
``EARLY=1``: the echo's request passed as ``early_data``); prints CPU µs and wall µs per
round trip, and with ``CALLS=1`` the Python function calls per round trip (cProfile: a
count, so it does not move with the machine's load).

    TESTS_ROOT=<tree> PYTHONPATH=<tree>/src:<tree> python bench/ab_rr.py LABEL

`TESTS_ROOT` names the tree whose test helpers start the router and the contexts, so the same
script measures an older checkout too (as `ab_transfer.py`).
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import resource
import sys
import time
from typing import Any

sys.path.insert(0, os.environ.get("TESTS_ROOT", "."))

from tests.conftest import context, running_router
from umbranet.aio.runtime import run
from umbranet.testing import LocalNetwork

ROUNDS = int(os.environ.get("ROUNDS", "5000"))
MODE = os.environ.get("MODE", "rr")  # "connect": each round dials a new stream (in session)
MESSAGE = b"r" * 64


async def _echo(listener: Any) -> None:
    async for stream in listener:
        asyncio.get_running_loop().create_task(_echo_stream(stream))


async def _echo_stream(stream: Any) -> None:
    while data := await stream.read(65536):
        stream.write(data)
        await stream.drain()
    stream.close()


async def _round_trips(stream: Any, count: int) -> None:
    for _ in range(count):
        stream.write(MESSAGE)
        await stream.drain()
        got = b""
        while len(got) < len(MESSAGE):
            got += await stream.read(65536)


async def _connects(client: Any, count: int) -> None:
    """What bench.paths' `connect` row times: a new stream, one round trip, half-close."""
    early = os.environ.get("EARLY") == "1"  # the first write rides with the open
    for _ in range(count):
        if early:
            stream = await client.dial("echo", early_data=MESSAGE)
            await stream.readexactly(len(MESSAGE))
        else:
            stream = await client.dial("echo")
            await _round_trips(stream, 1)
        stream.write_eof()


async def main(label: str) -> None:
    network = LocalNetwork()
    network.service("echo", dial=("client",), bind=("server",))
    async with running_router(network):
        host, client = context(network, "web", "server"), context(network, "alice", "client")
        async with host, client:
            listener = await host.listen("echo").start()
            task = asyncio.get_running_loop().create_task(_echo(listener))
            stream = await client.dial("echo")
            await _round_trips(stream, 200)  # warm: keys, buffers, caches
            if MODE == "connect":
                await _connects(client, 20)
            profile = cProfile.Profile() if os.environ.get("CALLS") else None
            before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            if profile:
                profile.enable()
            if MODE == "connect":
                await _connects(client, ROUNDS)
            else:
                await _round_trips(stream, ROUNDS)
            if profile:
                profile.disable()
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            cpu_us, wall_us = cpu / ROUNDS * 1e6, wall / ROUNDS * 1e6
            line = f"{label} cpu_us_per_rt={cpu_us:.1f} wall_us_per_rt={wall_us:.1f}"
            if profile:
                stats = pstats.Stats(profile)
                line += f" calls_per_rt={stats.total_calls / ROUNDS:.1f}"  # type: ignore[attr-defined]
                if os.environ.get("CALLS") == "top":
                    _print_top(stats, ROUNDS)
            print(line)
            task.cancel()


def _print_top(stats: pstats.Stats, rounds: int, count: int = 400) -> None:
    """The most-called functions, per round trip, named without the tree's own path."""
    rows = stats.stats.items()  # type: ignore[attr-defined]
    top = sorted(rows, key=lambda item: -item[1][1])[:count]
    for (path, line, name), (_, calls, *_rest) in top:
        where = path.split("/src/")[-1] if "/src/" in path else os.path.basename(path)
        print(f"{calls / rounds:8.2f} {where}:{line}({name})")


if __name__ == "__main__":
    run(main(sys.argv[1] if len(sys.argv) > 1 else "tree"))
