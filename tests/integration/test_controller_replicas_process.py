"""Two `umbra controller run` processes on one PostgreSQL database, over real mutual TLS.

The first replica is made by `controller init --db --kek-file`, the second by `controller
join`; a subscriber follows replica B's event stream while an admin disables an identity
through replica A. The delay from the disable call to B's event is printed (not asserted).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from umbranet.client.controller import ControllerClient
from umbranet.pki import IdentityFile, verify_ticket

pytestmark = pytest.mark.slow


def _umbra(home: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "umbranet.cli.main", "--home", str(home), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"controller exited: {log.read_text()}")
        try:
            httpx.get(f"{url}/v1/bundle", verify=False, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"controller did not start: {log.read_text()}")


@pytest.fixture
def two_replicas(tmp_path: Path, pg_url: str) -> Iterator[tuple[str, str, Path]]:
    """(URL of A, URL of B, A's home) with both serving; stopped with SIGTERM afterwards."""
    env = {**os.environ, "UMBRA_KEK_FILE": str(tmp_path / "kek")}
    ports = free_port(), free_port()
    homes = tmp_path / "a", tmp_path / "b"
    init = _umbra(
        homes[0], "controller", "init", "--db", pg_url, "--address", f"127.0.0.1:{ports[0]}",
        env=env,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    join = _umbra(
        homes[1], "controller", "join", "--db", pg_url, "--address", f"127.0.0.1:{ports[1]}",
        env=env,
    )  # fmt: skip
    assert join.returncode == 0, join.stderr
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for home, port in zip(homes, ports, strict=True):
            log = home.parent / f"{home.name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "umbranet.cli.main", "--home", str(home),
                     "controller", "run"],
                    stdout=out, stderr=subprocess.STDOUT, env=env,
                )  # fmt: skip
            processes.append(process)
            _wait_until_serving(f"https://127.0.0.1:{port}", process, log)
        yield f"https://127.0.0.1:{ports[0]}", f"https://127.0.0.1:{ports[1]}", homes[0]
    finally:
        for process in processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


def test_a_disable_through_replica_a_reaches_a_stream_following_replica_b(
    two_replicas: tuple[str, str, Path],
) -> None:
    url_a, url_b, home_a = two_replicas
    admin = IdentityFile.load(home_a / "admin.json")
    assert admin.controller_url == url_a
    admin_b = dataclasses.replace(admin, controller_url=url_b)

    async def scenario() -> float:
        async with ControllerClient(admin) as on_a, ControllerClient(admin_b) as on_b:
            await on_a.create_service("db", dial_attributes=["eng"], bind_attributes=["dbhost"])
            created = await on_a.create_identity("bob", attributes=["eng"])
            # bob enrolls (through A, the URL in the token) and gets a ticket from B.
            bob = await ControllerClient.enroll(created.enrollment_token)
            async with ControllerClient(dataclasses.replace(bob, controller_url=url_b)) as bob_on_b:
                grant = await bob_on_b.ticket("db", "dial")
            assert verify_ticket(grant.ticket, admin.bundle, datetime.now(UTC)).spiffe_id == (
                bob.spiffe_id
            )

            stream = on_b.events()
            name, hello = await asyncio.wait_for(anext(stream), 10)
            assert name == "hello"
            started = time.monotonic()
            await on_a.disable_identity("bob")
            while True:
                name, data = await asyncio.wait_for(anext(stream), 10)
                if name == "epoch":
                    break
            delay = time.monotonic() - started
            await stream.aclose()
            assert data["reason"] == "identity bob disabled"
            assert data["epoch"] > hello["epoch"]
            return delay

    delay = asyncio.run(scenario())
    print(
        f"\nrevocation via replica A seen on replica B's event stream after {delay * 1000:.1f} ms"
    )
