"""The spine with real processes on loopback: controller, router, a host and a dialer.

64 MiB of random bytes go from the dialer to the host and back with equal sha256 both ways;
the hosting process has no listening socket; the quickstart fetch works; a disabled identity
is refused its next dial.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from umbranet.quickstart import Quickstart

PEER = Path(__file__).with_name("overlay_peer.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    root = tmp_path_factory.mktemp("net")
    net = Quickstart(
        root, router_port=free_port(), controller_port=free_port(), say=lambda _m: None
    )
    try:
        net.start_core()
        yield net
    finally:
        net.stop()


def _listening_sockets(pid: int) -> list[str]:
    """This process's own listening TCP sockets and any UDP sockets, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            listening = table.startswith("udp") or fields[3] == "0A"
            if fields[9] in inodes and listening:
                found.append(f"{table} {fields[1]}")
    return found


def _start_host(net: Quickstart, identity: Path, service: str) -> subprocess.Popen[str]:
    host = subprocess.Popen(
        [sys.executable, str(PEER), "host", str(identity), service],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert host.stdout is not None
    line = host.stdout.readline()
    assert json.loads(line)["event"] == "bound", host.stderr.read() if host.stderr else line
    return host


def test_64_mib_round_trip_between_processes_with_a_dark_host(network: Quickstart) -> None:
    asyncio.run(network.ensure_service("bulk", ["bulk-clients"], ["bulk-hosts"]))
    host_file = asyncio.run(network.enroll("bulk-host", ["bulk-hosts"]))
    client_file = asyncio.run(network.enroll("bulk-client", ["bulk-clients"]))
    host = _start_host(network, host_file, "bulk")
    try:
        assert _listening_sockets(host.pid) == []
        dial = subprocess.run(
            [sys.executable, str(PEER), "dial", str(client_file), "bulk", "64"],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=REPO,
            check=False,
        )
        assert dial.returncode == 0, dial.stderr
        result = json.loads(dial.stdout.strip().splitlines()[-1])
        assert result["echo_sha256"] == result["sent_sha256"]
        assert result["echoed"] == 64 << 20
        assert result["host"].endswith("/workload/bulk-host")
        assert host.stdout is not None
        seen = json.loads(host.stdout.readline())
        assert seen["sha256"] == result["sent_sha256"]
        assert seen["peer"].endswith("/workload/bulk-client")
        assert _listening_sockets(host.pid) == []
        print(
            f"\n64 MiB each way: {result['mb_per_s_each_way']:.0f} MB/s, "
            f"dial + first round trip {result['dial_first_rtt_ms']:.1f} ms"
        )
    finally:
        host.terminate()
        host.wait(10)


def test_disabled_identity_is_refused_its_next_dial(network: Quickstart) -> None:
    asyncio.run(network.ensure_service("bulk", ["bulk-clients"], ["bulk-hosts"]))
    client_file = asyncio.run(network.enroll("eve", ["bulk-clients"]))

    async def disable() -> None:
        async with network.admin() as admin:
            await admin.disable_identity("eve")

    asyncio.run(disable())
    dial = subprocess.run(
        [sys.executable, str(PEER), "dial", str(client_file), "bulk", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert dial.returncode != 0
    assert "identity_disabled" in dial.stderr


def test_quickstart_serves_the_demo_dark_and_fetches_it(tmp_path: Path) -> None:
    net = Quickstart(
        tmp_path / "qs", router_port=free_port(), controller_port=free_port(), say=lambda _m: None
    )
    try:
        response = net.start()
        host_pid = net.children[net.names.index("demo-host")].pid
        assert response.startswith(b"HTTP/1.1 200 OK")
        assert b"hello demo-client" in response
        assert b'"host_listening_sockets": 0' in response
        assert _listening_sockets(host_pid) == []
    finally:
        net.stop()
