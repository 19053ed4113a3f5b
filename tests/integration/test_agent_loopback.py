"""The agent in loopback mode, with real processes: controller, router, two agents, real apps.

A host agent publishes three dark services (an HTTP server, a TCP echo, an app that asks
whois who called it) and one whose host address refuses; a client agent gives each a
loopback port. Unmodified clients (curl, socat) reach them; the host agent opens no TCP
port; the local API answers status, ping and whois and survives garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, start_agent, wait_for
from umbranet.agent import LocalApiClient
from umbranet.quickstart import Quickstart

pytestmark = pytest.mark.slow

SERVICES = ("web", "echo", "whoami", "broken", "nohost")


def _serve_tcp(handler: Callable[[socket.socket], None]) -> tuple[socket.socket, int]:
    """A tiny threaded TCP app on 127.0.0.1 (the dark service's host address)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def loop() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_guarded, args=(handler, conn), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return server, server.getsockname()[1]


def _guarded(handler: Callable[[socket.socket], None], conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):
        handler(conn)


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


@dataclass
class Agents:
    net: Quickstart
    root: Path
    host_dir: Path
    client_dir: Path
    ports: dict[str, int]
    blob: bytes
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def umbra(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "umbranet.cli.main", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def status(self, state_dir: Path) -> dict[str, Any]:
        data: dict[str, Any] = LocalApiClient(state_dir / "agent.sock").get("/v1/status")
        return data


def _start_agent(
    net: Quickstart, identity: Path, state_dir: Path, extra: list[str]
) -> subprocess.Popen[bytes]:
    return start_agent(identity, state_dir, net.logs / f"agent-{state_dir.name}.log", extra)


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    root = tmp_path_factory.mktemp("agentnet")
    net = Quickstart(
        root / "net", router_port=free_port(), controller_port=free_port(), say=lambda _m: None
    )
    www = root / "www"
    www.mkdir()
    blob = os.urandom(3 << 20)
    (www / "blob.bin").write_bytes(blob)
    (www / "index.html").write_text("hello from a dark web server\n")
    http_port = free_port()
    http = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1"],
        cwd=www,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    host_dir, client_dir = root / "host-agent", root / "client-agent"
    echo_server, echo_port = _serve_tcp(_echo)

    def whoami(conn: socket.socket) -> None:
        peer = conn.getpeername()
        client = LocalApiClient(host_dir / "agent.sock")
        answer = client.get("/v1/whois", {"addr": f"{peer[0]}:{peer[1]}"})
        conn.sendall(json.dumps(answer).encode() + b"\n")

    whoami_server, whoami_port = _serve_tcp(whoami)
    agents = Agents(net, root, host_dir, client_dir, {}, blob)
    try:
        net.start_core()
        wait_for("the http server", lambda: socket.create_connection(("127.0.0.1", http_port)))
        addresses = {
            "web": f"tcp://127.0.0.1:{http_port}",
            "echo": f"tcp://127.0.0.1:{echo_port}",
            "whoami": f"tcp://127.0.0.1:{whoami_port}",
            "broken": f"tcp://127.0.0.1:{free_port()}",
            "nohost": None,
        }
        asyncio.run(_create_services(net, addresses))
        host_file = asyncio.run(net.enroll("agent-host", ["agent-hosts"]))
        client_file = asyncio.run(net.enroll("agent-client", ["agent-clients", "team-blue"]))
        agents.ports = {name: free_port() for name in SERVICES}
        overrides = [f"--port={name}={port}" for name, port in agents.ports.items()]
        agents.children.append(_start_agent(net, host_file, host_dir, []))
        agents.children.append(_start_agent(net, client_file, client_dir, overrides))
        wait_for(
            "the host agent to bind",
            lambda: (
                all(h["bound_routers"] for h in agents.status(host_dir)["host"])
                and len(agents.status(host_dir)["host"]) == 4
            ),
        )
        wait_for(
            "the client agent's listeners",
            lambda: len([d for d in agents.status(client_dir)["dial"] if d["listen"]]) == 5,
            explain=lambda: _log_tail(net.logs / f"agent-{client_dir.name}.log"),
        )
        yield agents
    finally:
        for child in agents.children:
            child.terminate()
        for child in agents.children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
        http.terminate()
        http.wait(10)
        echo_server.close()
        whoami_server.close()
        net.stop()


def _log_tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return f"--- {path.name}, last {lines} lines ---\n" + "\n".join(
            path.read_text(errors="replace").splitlines()[-lines:]
        )
    return f"--- {path.name}: no log ---"


async def _create_services(net: Quickstart, addresses: dict[str, str | None]) -> None:
    async with net.admin() as admin:
        for name, address in addresses.items():
            await admin.create_service(
                name,
                dial_attributes=["agent-clients"],
                bind_attributes=["agent-hosts"] if address else ["nobody"],
                host_address=address,
            )


def _tcp_listeners(pid: int) -> list[str]:
    """The process's listening TCP sockets and UDP sockets, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = fd.readlink().as_posix()
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and (table.startswith("udp") or fields[3] == "0A"):
                found.append(f"{table} {fields[1]}")
    return found


def test_curl_fetches_a_dark_http_service_and_the_host_opens_no_port(agents: Agents) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (Debian package curl)")
    url = f"http://127.0.0.1:{agents.ports['web']}"
    page = subprocess.run(
        [curl, "-sS", "--fail", f"{url}/"], capture_output=True, timeout=60, check=False
    )
    assert page.returncode == 0, page.stderr
    assert page.stdout == b"hello from a dark web server\n"
    blob = subprocess.run(
        [curl, "-sS", "--fail", f"{url}/blob.bin"], capture_output=True, timeout=120, check=False
    )
    assert blob.returncode == 0, blob.stderr
    assert hashlib.sha256(blob.stdout).digest() == hashlib.sha256(agents.blob).digest()
    host_agent = agents.children[0]
    assert _tcp_listeners(host_agent.pid) == []


def test_a_tcp_tool_echoes_through_the_agent(agents: Agents) -> None:
    payload = os.urandom(1 << 20)
    port = agents.ports["echo"]
    socat = shutil.which("socat")
    if socat is not None:
        done = subprocess.run(
            [socat, "-t", "60", "-", f"TCP:127.0.0.1:{port}"],
            input=payload,
            capture_output=True,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == payload
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        echoed = b"".join(iter(lambda: conn.recv(65536), b""))
    assert echoed == payload
    if socat is None:
        pytest.skip("socat is not installed: checked the echo with a Python client only")


def test_whois_names_the_dialer_to_the_host_app_and_the_host_to_the_client(
    agents: Agents,
) -> None:
    with socket.create_connection(("127.0.0.1", agents.ports["whoami"])) as conn:
        line = b"".join(iter(lambda: conn.recv(65536), b""))
    answer = json.loads(line)
    assert answer["name"] == "agent-client"
    assert answer["spiffe_id"].endswith("/workload/agent-client")
    assert answer["attributes"] == ["agent-clients", "team-blue"]
    assert (answer["direction"], answer["service"], answer["router"]) == (
        "inbound",
        "whoami",
        "router1",
    )

    with socket.create_connection(("127.0.0.1", agents.ports["echo"])) as conn:
        conn.sendall(b"x")
        assert conn.recv(1) == b"x"
        local = "{}:{}".format(*conn.getsockname()[:2])
        result = agents.umbra("whois", local, "--state-dir", str(agents.client_dir), "--json")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert (seen["name"], seen["direction"], seen["service"]) == ("agent-host", "outbound", "echo")
    unknown = agents.umbra("whois", "127.0.0.1:1", "--state-dir", str(agents.client_dir))
    assert unknown.returncode == 1
    assert "unknown_connection" in unknown.stderr


def test_ping_reports_the_router_and_round_trip_times(agents: Agents) -> None:
    result = agents.umbra("ping", "web", "-c", "3", "--state-dir", str(agents.client_dir), "--json")
    assert result.returncode == 0, result.stderr
    ping = json.loads(result.stdout)
    assert ping["router"] == "router1"
    assert ping["host"]["name"] == "agent-host"
    assert len(ping["rtt_ms"]) == 3
    assert all(r > 0 for r in ping["rtt_ms"])
    (hop,) = ping["path"]  # the first hop as the agent measures it
    assert hop["router"] == "router1" and hop["rtt_ms"] is not None and hop["rtt_ms"] > 0
    human = agents.umbra("ping", "web", "--state-dir", str(agents.client_dir))
    assert human.returncode == 0 and "router1" in human.stdout
    assert "hop router1: link RTT" in human.stdout
    refused = agents.umbra("ping", "nohost", "--state-dir", str(agents.client_dir))
    assert refused.returncode == 1
    assert "no_terminator" in refused.stderr


def test_status_shows_identity_routers_services_and_recorded_ports(agents: Agents) -> None:
    result = agents.umbra("status", "--json", "--state-dir", str(agents.client_dir))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["identity"]["name"] == "agent-client"
    assert status["identity"]["cert_not_after"]
    assert [(r["name"], r["link"]) for r in status["routers"]] == [("router1", "up")]
    (router,) = status["routers"]
    assert router["home"] is True and router["rtt_ms"] > 0  # measured, and where dials go
    listening = {d["service"]: d["listen"] for d in status["dial"]}
    assert listening == {n: f"127.0.0.1:{p}" for n, p in agents.ports.items()}
    recorded = json.loads((agents.client_dir / "ports.json").read_text())
    assert recorded == agents.ports
    hosted = agents.status(agents.host_dir)
    assert sorted(h["service"] for h in hosted["host"]) == ["broken", "echo", "web", "whoami"]
    assert hosted["dial"] == []
    human = agents.umbra("status", "--state-dir", str(agents.client_dir))
    assert human.returncode == 0 and "router1" in human.stdout


def test_garbage_on_the_unix_socket_gets_400_and_the_api_keeps_serving(agents: Agents) -> None:
    path = agents.client_dir / "agent.sock"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(agents.client_dir.stat().st_mode) == 0o700
    for garbage in (b"\x00\xff\x13garbage\r\n\r\n", b"GET /v1/status\r\n", b"x" * 40000):
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(path))
            with contextlib.suppress(OSError):
                conn.sendall(garbage)
                conn.shutdown(socket.SHUT_WR)
            answer = b"".join(iter(lambda c=conn: c.recv(65536), b""))
        assert answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:200]
        assert b'"code"' in answer
    counters = agents.status(agents.client_dir)["counters"]
    assert sum(v for k, v in counters.items() if k.startswith("api_bad_request")) >= 3


def test_a_refusing_host_address_resets_the_client_and_other_flows_continue(
    agents: Agents,
) -> None:
    with socket.create_connection(("127.0.0.1", agents.ports["echo"])) as steady:
        steady.sendall(b"before")
        assert steady.recv(6) == b"before"
        for name in ("broken", "nohost"):
            with socket.create_connection(("127.0.0.1", agents.ports[name])) as conn:
                conn.settimeout(30)
                # RST, not FIN: a FIN would make recv return b"" instead of raising.
                with pytest.raises((ConnectionResetError, BrokenPipeError)):
                    conn.sendall(b"hello?")
                    conn.recv(100)
        steady.sendall(b"after")
        assert steady.recv(5) == b"after"
    host = agents.status(agents.host_dir)
    assert host["counters"]["host_refused"] >= 1
    broken = next(h for h in host["host"] if h["service"] == "broken")
    assert "refused" in broken["last_failure"]
    client = agents.status(agents.client_dir)["counters"]
    assert client["dial_failed.no_terminator"] >= 1
    assert any(k.startswith("dial_reset_by_overlay") for k in client)


def test_the_agent_follows_the_controller(agents: Agents) -> None:
    async def create() -> None:
        async with agents.net.admin() as admin:
            await admin.create_service("late", dial_attributes=["team-blue"])

    async def delete() -> None:
        async with agents.net.admin() as admin:
            await admin.delete_service("late")

    asyncio.run(create())
    late = wait_for(
        "the new service's listener",
        lambda: [d for d in agents.status(agents.client_dir)["dial"] if d["service"] == "late"],
    )
    assert late[0]["listen"] and late[0]["source"] in ("derived", "recorded", "intercept")
    asyncio.run(delete())
    wait_for(
        "the listener to close",
        lambda: "late" not in {d["service"] for d in agents.status(agents.client_dir)["dial"]},
    )


def test_daemon_up_and_down(agents: Agents) -> None:
    state_dir = agents.root / "daemon-agent"
    identity = asyncio.run(agents.net.enroll("agent-daemon", ["agent-clients"]))
    up = agents.umbra(
        "--json", "up", "--identity", str(identity), "--state-dir", str(state_dir), "--daemon"
    )
    assert up.returncode == 0, up.stderr + up.stdout
    pid = json.loads(up.stdout)["pid"]
    assert int((state_dir / "agent.pid").read_text()) == pid
    status = agents.status(state_dir)
    assert status["agent"]["pid"] == pid
    assert {d["service"] for d in status["dial"]} >= set(SERVICES)
    again = agents.umbra("up", "--identity", str(identity), "--state-dir", str(state_dir))
    assert again.returncode == 1 and "already_running" in again.stderr
    down = agents.umbra("down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert not (state_dir / "agent.pid").exists()
    assert not (state_dir / "agent.sock").exists()
    gone = agents.umbra("down", "--state-dir", str(state_dir))
    assert gone.returncode == 1 and "not_running" in gone.stderr
