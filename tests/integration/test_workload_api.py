"""The agent's SPIFFE Workload API, checked by an independent client (py-spiffe).

Real processes: a controller, a router and an agent (`umbra up`), and py-spiffe in a process
of its own (`spiffe_client.py`). py-spiffe fetches the X.509-SVID and verifies it against
the bundle, fetches a JWT-SVID and validates it both through the API and locally against
the JWT bundle, and sees a rotation: a real renewal through the controller, asked for on the
agent's local API. Calls without the security header are refused, and garbage on the socket
harms nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, start_agent, wait_for
from umbranet.agent import LocalApiClient
from umbranet.quickstart import Quickstart

# Looked up, never imported: its generated messages would clash with ours in this process.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("spiffe") is None,
        reason="py-spiffe (PyPI: spiffe, in the dev extra) is not installed",
    ),
]

CLIENT = Path(__file__).with_name("spiffe_client.py")
AUDIENCE = "billing.example"


@dataclass
class Network:
    net: Quickstart
    state_dir: Path
    socket: Path
    spiffe_id: str
    agent: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def client(self, *args: str, timeout: float = 60) -> dict[str, Any]:
        """Run py-spiffe once; its one JSON line."""
        result = subprocess.run(
            [sys.executable, str(CLIENT), self.endpoint, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={k: v for k, v in os.environ.items() if k != "SPIFFE_ENDPOINT_SOCKET"},
        )
        assert result.returncode == 0, result.stderr
        answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return answer


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("wlapi")
    net = Quickstart(
        root / "net", router_port=free_port(), controller_port=free_port(), say=lambda _m: None
    )
    agent: subprocess.Popen[bytes] | None = None
    try:
        net.start_core()
        identity = asyncio.run(net.enroll("payments", ["workloads"]))
        spiffe_id = json.loads(identity.read_text())["spiffe_id"]
        state_dir = root / "agent"
        sock = root / "wl.sock"
        environment = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"unix://{sock}"}
        agent = start_agent(identity, state_dir, net.logs / "agent-workload.log", env=environment)
        wait_for("the workload socket", sock.exists)
        yield Network(net, state_dir, sock, spiffe_id, agent)
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
        net.stop()


def test_py_spiffe_fetches_and_validates_x509_and_jwt_svids(network: Network) -> None:
    answer = network.client("fetch", AUDIENCE)
    # Checked once the API answered: the socket appears (0755 at most) just before its chmod.
    info = network.socket.stat()
    assert info.st_mode & 0o077 == 0, oct(info.st_mode)  # owner only

    assert answer["spiffe_id"] == network.spiffe_id
    assert answer["context_spiffe_id"] == network.spiffe_id
    assert answer["chain_verifies"] is True
    assert answer["jwt_sub"] == network.spiffe_id
    assert answer["jwt_aud"] == [AUDIENCE]
    assert answer["jwt_exp"] > time.time()
    assert answer["validated_sub"] == network.spiffe_id  # ValidateJWTSVID on the agent
    assert answer["local_sub"] == network.spiffe_id  # checked against the fetched JWKS
    assert len(answer["jwt_kids"]) == 1
    assert answer["wrong_audience"] == "ValidateJwtSvidError"
    assert answer["no_audience"] == "ArgumentError"


def test_calls_without_the_security_header_or_an_audience_are_refused(network: Network) -> None:
    answer = network.client("raw")
    assert answer["x509"][0] == "INVALID_ARGUMENT"
    assert "security header" in answer["x509"][1]
    assert answer["jwt"][0] == "INVALID_ARGUMENT"
    assert "security header" in answer["jwt"][1]
    assert answer["jwt_no_audience"][0] == "INVALID_ARGUMENT"
    assert "audience" in answer["jwt_no_audience"][1]
    assert answer["jwt_other_id"][0] == "PERMISSION_DENIED"


def test_garbage_on_the_socket_harms_nothing(network: Network) -> None:
    for garbage in (
        os.urandom(4096),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(512),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"",
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(5)
            raw.connect(str(network.socket))
            with contextlib.suppress(OSError):
                raw.sendall(garbage)
                raw.recv(1024)
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(str(network.socket))  # a client that connects and says nothing
    try:
        assert network.client("fetch", AUDIENCE)["spiffe_id"] == network.spiffe_id
    finally:
        idle.close()
    assert network.agent.poll() is None


def test_a_watching_client_sees_the_rotation(network: Network) -> None:
    watcher = subprocess.Popen(
        [sys.executable, str(CLIENT), network.endpoint, "watch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: queue.Queue[dict[str, Any]] = queue.Queue()

    def pump() -> None:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            with contextlib.suppress(ValueError):
                lines.put(json.loads(line))

    threading.Thread(target=pump, daemon=True).start()
    try:
        first = lines.get(timeout=60)
        assert (first["event"], first["spiffe_id"]) == ("update", network.spiffe_id), first

        api = LocalApiClient(network.state_dir / "agent.sock")
        renewed = api.post("/v1/renew", {})
        assert "cert_not_after" in renewed

        second = lines.get(timeout=60)
        assert second["event"] == "update", second
        assert second["spiffe_id"] == network.spiffe_id
        assert second["serial"] != first["serial"]
        # A fresh client now gets the new certificate too.
        assert network.client("fetch", AUDIENCE)["serial"] == second["serial"]
    finally:
        assert watcher.stdin is not None
        watcher.stdin.close()
        try:
            watcher.wait(15)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.wait()


def test_stopping_the_agent_removes_the_socket(network: Network) -> None:
    """Runs last in this module: it stops the shared agent."""
    network.agent.terminate()
    assert network.agent.wait(30) == 0
    assert not network.socket.exists()
