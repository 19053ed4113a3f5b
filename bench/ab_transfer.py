"""A/B of one tree against another: 512 MiB through one stream, router, host and client in one
process on loopback; prints CPU seconds per GB and wall MB/s (see RESULTS-core-ab.md).

    TESTS_ROOT=<tree> PYTHONPATH=<tree>/src:<tree> python bench/ab_transfer.py LABEL

`TESTS_ROOT` names the tree whose test helpers (`tests.conftest`) start the router and the
contexts, so the same script measures an older checkout too.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from typing import Any

sys.path.insert(0, os.environ.get("TESTS_ROOT", "."))

from tests.conftest import context, running_router
from umbranet.aio.runtime import run
from umbranet.testing import LocalNetwork

TOTAL = int(os.environ.get("TOTAL", str(512 * 1024 * 1024)))
CHUNK = b"x" * (128 * 1024)


async def _sink(listener: Any) -> None:
    async for stream in listener:
        while await stream.read(1 << 20):
            pass
        stream.write(b"ok")
        stream.write_eof()


async def main(label: str) -> None:
    network = LocalNetwork()
    network.service("sink", dial=("client",), bind=("server",))
    async with running_router(network):
        host, client = context(network, "web", "server"), context(network, "alice", "client")
        async with host, client:
            listener = await host.listen("sink").start()
            task = asyncio.get_running_loop().create_task(_sink(listener))
            stream = await client.dial("sink")
            before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            sent = 0
            while sent < TOTAL:
                stream.write(CHUNK)
                await stream.drain()
                sent += len(CHUNK)
            stream.write_eof()
            assert await stream.read() == b"ok"
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            rate = TOTAL / wall / 1e6
            print(f"{label} cpu_s_per_GB={cpu / (TOTAL / 1e9):.2f} wall_MBps={rate:.0f}")
            task.cancel()


if __name__ == "__main__":
    run(main(sys.argv[1] if len(sys.argv) > 1 else "tree"))
