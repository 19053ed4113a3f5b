"""Clients fail over between controller replicas: real processes on one PostgreSQL.

Replicas A and B (`umbra controller run` twice), a router process and SDK endpoints (a host
and a dialer, in this process) that all start on A's URL. With a stream established and
carrying data, A is killed with SIGKILL. Then: the stream keeps working; the router and the
endpoints follow B's event stream; admin calls, a new enrollment and a new ticket succeed
through B (the CLI, and an enrollment token minted by A, too, told B's URL by
``UMBRA_CONTROLLERS``); and a revocation made through
B closes the established stream of the identity it disables, through the router that had
followed A. The time from the disable call to the stream's end is printed (not asserted).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.integration.test_controller_replicas_process import _umbra, _wait_until_serving
from umbranet.client.controller import ControllerClient, ControllerError
from umbranet.client.transport import directory
from umbranet.pki import IdentityFile
from umbranet.sdk import Context, Stream

pytestmark = pytest.mark.slow

ROUND_TRIP_TIMEOUT = 10.0


class Net:
    def __init__(self, root: Path, pg_url: str) -> None:
        self.root = root
        self.env = {**os.environ, "UMBRA_KEK_FILE": str(root / "kek"), "PYTHONUNBUFFERED": "1"}
        self.ports = free_port(), free_port()
        self.urls = [f"https://127.0.0.1:{p}" for p in self.ports]
        self.homes = root / "a", root / "b"
        self.pg_url = pg_url
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.root / f"{name}.log").open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "umbranet.cli.main", *args],
                stdout=out, stderr=subprocess.STDOUT, env=self.env,
            )  # fmt: skip
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def net(tmp_path: Path, pg_url: str) -> Iterator[Net]:
    directory.forget()
    net = Net(tmp_path, pg_url)
    for verb, home, port in (
        ("init", net.homes[0], net.ports[0]),
        ("join", net.homes[1], net.ports[1]),
    ):
        made = _umbra(
            home, "controller", verb, "--db", pg_url, "--address", f"127.0.0.1:{port}",
            env=net.env,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
    try:
        for name, home, url in zip("ab", net.homes, net.urls, strict=True):
            process = net.spawn(name, "--home", str(home), "controller", "run")
            _wait_until_serving(url, process, net.root / f"{name}.log")
        yield net
    finally:
        net.stop()
        directory.forget()


async def _round_trip(stream: Stream, payload: bytes) -> None:
    stream.write(payload)
    await stream.drain()
    assert await asyncio.wait_for(stream.readexactly(len(payload)), ROUND_TRIP_TIMEOUT) == payload


async def _echo(stream: Stream) -> None:
    try:
        while data := await stream.read(65536):
            stream.write(data)
            await stream.drain()
        stream.write_eof()
    except Exception:  # the dialer's stream was closed by a revocation
        return


async def _serve(listener: Any) -> None:
    async for stream in listener:
        asyncio.get_running_loop().create_task(_echo(stream))


async def _until(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = await check()
        except ControllerError:
            value = None
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def _subscribers(admin: ControllerClient) -> float:
    return float((await admin.metrics()).get("umbra_event_subscribers", 0))


def test_killing_replica_a_moves_everyone_to_b(net: Net) -> None:
    url_a, url_b = net.urls
    admin_file = net.homes[0] / "admin.json"
    admin_id = IdentityFile.load(admin_file)
    assert admin_id.controller_url == url_a
    rport = free_port()

    async def enroll(admin: ControllerClient, name: str, attrs: list[str]) -> Path:
        created = await admin.create_identity(name, kind="workload", attributes=attrs)
        path = net.root / f"{name}.json"
        (await ControllerClient.enroll(created.enrollment_token)).save(path)
        return path

    async def scenario() -> float:
        async with ControllerClient(admin_id) as admin:
            # A lists B once B's first heartbeat is in; everyone connecting later learns it.
            await _until("A to list B", lambda: _listed(admin, url_b))
            directory.forget()  # this process learns again, from its endpoints' streams
            await admin.create_service("echo", dial_attributes=["c"], bind_attributes=["h"])
            router = await admin.create_router("r1")
            router_file = net.root / "r1.json"
            (await ControllerClient.enroll(router.enrollment_token)).save(router_file)
            net.spawn(
                "router", "router", "run", "--identity", str(router_file),
                "--listen", f"127.0.0.1:{rport}", "-v",
            )  # fmt: skip
            await _until(
                "the router to register",
                lambda: _registered(admin, f"127.0.0.1:{rport}"),
            )
            host_file = await enroll(admin, "host", ["h"])
            alice_file = await enroll(admin, "alice", ["c"])
            # A token minted by A, used after A is gone.
            dave = await admin.create_identity("dave", kind="workload", attributes=["c"])

        async with Context.from_file(host_file) as host, Context.from_file(alice_file) as alice:
            listener = await host.listen("echo").start()
            serving = asyncio.get_running_loop().create_task(_serve(listener))
            stream = await alice.dial("echo")
            await _round_trip(stream, b"before")
            async with ControllerClient(admin_id) as admin:
                # The router and both endpoints follow A, and their hello named B.
                await _until("three streams on A", lambda: _at_least(admin, 3))

            net.processes["a"].send_signal(signal.SIGKILL)
            net.processes["a"].wait(10)
            for i in range(20):  # traffic on the established stream across the failover
                await _round_trip(stream, f"during {i}".encode())
                await asyncio.sleep(0.05)

            async with ControllerClient(admin_id) as admin:  # still names A: fails over
                assert "alice" in {i.name for i in await admin.list_identities()}
                assert directory.candidates(admin_id.trust_domain, url_a)[0] == url_b
                # Router, host and alice re-followed on B (which also lists only itself).
                await _until("three streams on B", lambda: _at_least(admin, 3))
                carol_file = await enroll(admin, "carol", ["c"])
                assert IdentityFile.load(carol_file).controller_url == url_b
                os.environ["UMBRA_CONTROLLERS"] = url_b
                try:
                    dave_id = await ControllerClient.enroll(dave.enrollment_token)
                finally:
                    del os.environ["UMBRA_CONTROLLERS"]
                assert dave_id.controller_url == url_b  # the replica that answered
                async with Context.from_file(carol_file) as carol:
                    fresh = await carol.dial("echo")  # a ticket from B
                    await _round_trip(fresh, b"carol")
                    fresh.close()
                await _round_trip(stream, b"still here")

                started = time.monotonic()
                await admin.disable_identity("alice")
                try:
                    ended = await asyncio.wait_for(stream.read(1), ROUND_TRIP_TIMEOUT)
                except TimeoutError:
                    raise AssertionError("the revocation did not close the stream") from None
                except Exception:  # closed with an error: ended too
                    ended = b""
                delay = time.monotonic() - started
                assert ended == b""
            serving.cancel()
            return delay

    delay = asyncio.run(scenario())
    assert "Traceback" not in net.log("router"), net.log("router")
    cli = subprocess.run(
        [sys.executable, "-m", "umbranet.cli.main", "--home", str(net.homes[0]), "--json",
         "identity", "list"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**net.env, "UMBRA_CONTROLLERS": url_b},
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert "carol" in {i["name"] for i in json.loads(cli.stdout)}
    print(
        f"\nrevocation through replica B closed a stream whose router had followed the "
        f"killed replica A after {delay * 1000:.0f} ms"
    )


async def _listed(admin: ControllerClient, url: str) -> bool:
    return url in await admin.controllers()


async def _registered(admin: ControllerClient, address: str) -> bool:
    return any(r.address == address for r in await admin.routers())


async def _at_least(admin: ControllerClient, count: int) -> bool:
    return await _subscribers(admin) >= count
