"""redis-py, unmodified and given only a host name, talks to a real redis-server through the
overlay once patched: the blocking client and ``redis.asyncio`` (asyncio's resolve + connect).
The server listens on a Unix socket only (``--port 0``), so nothing reaches it but the overlay."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.unix_hosting import hosted_on_unix_socket
from umbranet.integrations import monkeypatch as mp
from umbranet.sdk.blocking import BlockingContext
from umbranet.testing import LocalNetwork

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install redis)")
REDIS_SERVER = shutil.which("redis-server")


@pytest.fixture
def redis_socket() -> Iterator[Path]:
    """A throwaway redis-server with no TCP port, listening on a Unix socket; yields it."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt install redis-server)")
    root = Path(tempfile.mkdtemp(prefix="umbra-redis-"))
    path = root / "redis.sock"
    server = subprocess.Popen(
        [
            *(REDIS_SERVER, "--port", "0", "--unixsocket", str(path), "--unixsocketperm", "700"),
            *("--save", "", "--appendonly", "no", "--dir", str(root)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert server.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not start in 30 s"
            time.sleep(0.05)
        yield path
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def _through_overlay(network: LocalNetwork, arun, redis_socket: Path, client_side) -> object:  # type: ignore[no-untyped-def]
    network.service("cache", dial=("client",), bind=("server",))
    return hosted_on_unix_socket(
        network, arun, "cache", redis_socket, client_side, host_name="cache-host"
    )


def test_redis_py_by_name(network: LocalNetwork, arun, tmp_path: Path, redis_socket: Path) -> None:
    path = tmp_path / "app.json"
    network.identity("app", attributes=("client",)).save(path)

    def client_side() -> list[object]:
        with (
            BlockingContext(path, control=network.control, renew=False) as ctx,
            mp.patched(ctx, dial={"cache.internal:6379": "cache"}),
        ):
            by_name = redis.Redis(host="cache.umbra", port=6379, socket_timeout=10)
            by_name.set("note", "[dark]")
            by_pair = redis.Redis(host="cache.internal", port=6379, socket_keepalive=True)
            answer = [by_pair.get("note"), by_pair.incr("hits"), by_name.incr("hits")]
            by_name.close()
            by_pair.close()
            return answer

    assert _through_overlay(network, arun, redis_socket, client_side) == [b"[dark]", 1, 2]


def test_redis_asyncio_by_name(
    network: LocalNetwork, arun, tmp_path: Path, redis_socket: Path
) -> None:
    """``redis.asyncio`` opens its connection with ``asyncio.open_connection(host, port)``."""
    import redis.asyncio

    path = tmp_path / "app.json"
    network.identity("app", attributes=("client",)).save(path)

    async def app() -> list[object]:
        client = redis.asyncio.Redis(host="cache.umbra", port=6379, socket_timeout=10)
        try:
            await client.rpush("queue", "a", "b")
            return [await client.lrange("queue", 0, -1), await client.ping()]
        finally:
            await client.aclose()

    def client_side() -> list[object]:
        with (
            BlockingContext(path, control=network.control, renew=False) as ctx,
            mp.patched(ctx),
            asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as run,
        ):
            return run.run(app())

    assert _through_overlay(network, arun, redis_socket, client_side) == [[b"a", b"b"], True]
