"""Shared fixtures: an in-process network with a real router on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from umbranet.aio.runtime import run
from umbranet.router import Router, RouterConfig
from umbranet.sdk import Context
from umbranet.testing import LocalNetwork

T = TypeVar("T")


@pytest.fixture
def arun() -> Callable[[Coroutine[Any, Any, T]], T]:
    """Run a coroutine to completion on uvloop (bounded by pytest-timeout)."""
    return run


@pytest.fixture
def network() -> LocalNetwork:
    net = LocalNetwork()
    net.service("echo", dial=("client",), bind=("server",))
    return net


@asynccontextmanager
async def running_router(network: LocalNetwork, name: str = "r1") -> AsyncIterator[Router]:
    identity = network.identity(name, kind="router")
    async with Router(RouterConfig(identity, port=0)) as router:
        network.routers.append(router.address)
        try:
            yield router
        finally:
            network.routers.remove(router.address)


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands to outgoing connections (`ip_local_port_range`)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_FLOOR = _ephemeral_floor()
_FREE_PORTS = range(max(1024, _EPHEMERAL_FLOOR - 12000), _EPHEMERAL_FLOOR)
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, for a server started later.

    Drawn from below the kernel's ephemeral range: a port that `bind(("", 0))` picks is one
    the kernel may give next to some process's outgoing connection (an agent's router
    link, say), which then holds it for as long as it lives and the server meant for it
    cannot bind. Ports handed out once in this process are not handed out again.
    """
    for _ in range(1000):
        port = random.choice(_FREE_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_FREE_PORTS}")


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float = 30.0,
    explain: Callable[[], str] | None = None,
) -> Any:
    """Poll `check` until it returns something truthy (a deadline, not a timing assertion).

    `explain` adds to the failure what would say why (a process's log, say)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = check()
            if last:
                return last
        time.sleep(0.1)
    detail = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}{detail}")


def context(network: LocalNetwork, name: str, *attributes: str) -> Context:
    identity = network.identity(name, attributes=attributes)
    return Context(identity, control=network.control, renew=False)


async def echo_forever(listener: Any) -> None:
    """Echo every incoming stream until EOF, each in its own task."""

    async def echo(stream: Any) -> None:
        try:
            while data := await stream.read(65536):
                stream.write(data)
                await stream.drain()
            stream.write_eof()
        except ConnectionError:
            pass

    tasks = set()
    async for stream in listener:
        task = asyncio.get_running_loop().create_task(echo(stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


logging.getLogger("umbranet").setLevel(logging.INFO)


def start_agent(
    identity: Path,
    state_dir: Path,
    log_path: Path,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`umbra up` as a real process (refreshing every 0.5 s), its output appended to a log."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "umbranet.cli.main",
                "up",
                "--identity",
                str(identity),
                "--state-dir",
                str(state_dir),
                "--refresh",
                "0.5",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=None if env is None else dict(env),
        )


# PostgreSQL fixtures (`pg_cluster`, `pg_url`, `db_url` over SQLite and PostgreSQL).
from tests.pg_harness import db_url, pg_cluster, pg_url  # noqa: E402, F401
