"""SIGTERM stops a controller promptly even while clients hold event streams open.

A replica being restarted (an upgrade, a rolling deploy) must go away in bounded time so its
clients move on; before, it waited for the last event-stream client to hang up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from umbranet.client.controller import ControllerClient, ControllerError
from umbranet.pki import IdentityFile

pytestmark = pytest.mark.slow

STREAMS = 20


def test_sigterm_with_open_event_streams_exits_cleanly(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    umbra = [sys.executable, "-m", "umbranet.cli.main", "--home", str(home), "controller"]
    init = subprocess.run(
        [*umbra, "init", "--address", f"127.0.0.1:{port}"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    log = tmp_path / "controller.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*umbra, "run"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                httpx.get(f"https://127.0.0.1:{port}/v1/bundle", verify=False, timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        admin = IdentityFile.load(home / "admin.json")
        took = asyncio.run(_terminate_while_streaming(admin, process))
        print(f"\nSIGTERM with {STREAMS} event streams open: exited after {took:.2f} s")
        # uvicorn re-raises the signal it caught once it has stopped.
        assert process.returncode in {0, -signal.SIGTERM}, log.read_text()
        assert "Traceback" not in log.read_text()
        assert "ERROR" not in log.read_text()  # no stream had to be cancelled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def _terminate_while_streaming(
    admin: IdentityFile, process: subprocess.Popen[bytes]
) -> float:
    clients = [ControllerClient(admin) for _ in range(STREAMS)]
    streams = [client.events() for client in clients]
    try:
        for stream in streams:  # every stream is open and past `hello`
            name, _ = await asyncio.wait_for(anext(stream), 10)
            assert name == "hello"
        # Clients go on reading, as routers and endpoints do, until the stream ends.
        readers = [asyncio.create_task(_drain(stream)) for stream in streams]
        started = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        # A bounded wait: the process must end on its own, streams still open on our side.
        await asyncio.to_thread(process.wait, 30)
        took = time.monotonic() - started
        await asyncio.wait_for(asyncio.gather(*readers), 10)  # every stream ended
        return took
    finally:
        for stream in streams:
            with contextlib.suppress(ControllerError, RuntimeError):
                await stream.aclose()
        for client in clients:
            await client.aclose()


async def _drain(stream: AsyncIterator[tuple[str, dict[str, object]]]) -> None:
    with contextlib.suppress(ControllerError):
        async for _ in stream:
            pass
