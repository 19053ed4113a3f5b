"""The controller as a real process: `umbra controller init` + `umbra controller run` on a free
loopback port, driven over real mutual TLS by `ControllerClient` and by the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from umbranet.client.controller import ControllerClient, ControllerError
from umbranet.pki import IdentityFile, TrustBundle

pytestmark = pytest.mark.slow


@dataclass
class Controller:
    home: Path
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def admin(self) -> IdentityFile:
        return IdentityFile.load(self.home / "admin.json")

    def umbra(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "umbranet.cli.main", "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )


def _wait_until_serving(controller: Controller) -> None:
    """Poll the public bundle route until the process answers (or dies)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if controller.process.poll() is not None:
            raise AssertionError(f"controller exited: {controller.log.read_text()}")
        try:
            httpx.get(f"{controller.url}/v1/bundle", verify=False, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"controller did not start: {controller.log.read_text()}")


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    home = tmp_path / "home"
    port = free_port()
    init = subprocess.run(
        [
            sys.executable,
            "-m",
            "umbranet.cli.main",
            "--home",
            str(home),
            "controller",
            "init",
            "--address",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    log = tmp_path / "controller.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "umbranet.cli.main", "--home", str(home), "controller", "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    ctl = Controller(home, port, process, log)
    try:
        _wait_until_serving(ctl)
        yield ctl
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()


def test_controller_process_end_to_end(controller: Controller, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ControllerClient(controller.admin()) as admin:
            created = await admin.create_identity("alice", attributes=["eng"])
            await admin.create_service("db", dial_attributes=["eng"], bind_attributes=["dbhost"])

            alice_id = await ControllerClient.enroll(created.enrollment_token)
            assert alice_id.spiffe_id == "spiffe://demo.umbra/device/alice"
            async with ControllerClient(alice_id) as alice:
                grant = await alice.ticket("db", "dial")
                assert grant.ticket.startswith("ut1.")
                with pytest.raises(ControllerError) as denied:
                    await alice.ticket("db", "bind")
                assert (denied.value.code, denied.value.status) == ("not_authorized", 403)

                with pytest.raises(ControllerError) as reused:
                    await ControllerClient.enroll(created.enrollment_token)
                assert (reused.value.code, reused.value.status) == ("token_used", 409)

                _send_garbage(controller.port)
                _tls_without_certificate(controller, alice_id.bundle)
                _garbage_http_inside_tls(controller, alice_id.bundle)

                assert (await alice.me()).name == "alice"

                await admin.disable_identity("alice")
                with pytest.raises(ControllerError) as disabled:
                    await alice.ticket("db", "dial")
                assert (disabled.value.code, disabled.value.status) == ("identity_disabled", 403)

            counters = await admin.metrics()
            assert counters['umbra_api_errors_total{code="client_cert_required"}'] == 1
            assert counters['umbra_api_errors_total{code="token_used"}'] == 1

    asyncio.run(scenario())
    assert controller.process.poll() is None, "the controller must still be running"
    log = controller.log.read_text()
    assert log.count("code=client_cert_required") == 1
    assert "Traceback" not in log
    for secret in ("ue1.", "ut1.", "PRIVATE KEY"):
        assert secret not in log


def test_cli_against_the_running_controller(controller: Controller, tmp_path: Path) -> None:
    token_file = tmp_path / "bob.token"
    created = controller.umbra("identity", "create", "bob", "--attr", "eng", "-o", str(token_file))
    assert created.returncode == 0, created.stderr
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"

    bob_file = tmp_path / "bob.json"
    enrolled = controller.umbra("enroll", str(token_file), "-o", str(bob_file))
    assert enrolled.returncode == 0, enrolled.stderr
    assert IdentityFile.load(bob_file).spiffe_id == "spiffe://demo.umbra/device/bob"
    again = controller.umbra("--json", "enroll", str(token_file), "-o", str(tmp_path / "b2.json"))
    assert again.returncode == 1
    assert json.loads(again.stdout)["error"]["code"] == "token_used"

    printed = controller.umbra("identity", "create", "carol", "--kind", "workload")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip().startswith("ue1.")

    service = controller.umbra(
        "service",
        "create",
        "web",
        "--dial-attr",
        "eng",
        "--bind-attr",
        "web",
        "--host",
        "tcp://127.0.0.1:8080",
        "--intercept",
        "web.umbra:80",
    )
    assert service.returncode == 0, service.stderr
    services = json.loads(controller.umbra("--json", "service", "list").stdout)
    assert services[0]["intercepts"] == [{"host": "web.umbra", "port": 80}]

    router = controller.umbra("router", "create", "r1")
    assert router.returncode == 0 and router.stdout.strip().startswith("ue1.")

    disabled = json.loads(controller.umbra("--json", "identity", "disable", "bob").stdout)
    assert disabled["enabled"] is False
    listed = json.loads(controller.umbra("--json", "identity", "list").stdout)
    assert {i["name"]: i["enabled"] for i in listed} == {
        "admin": True,
        "bob": False,
        "carol": True,
        "r1": True,
    }
    assert controller.umbra("service", "delete", "web").returncode == 0
    missing = controller.umbra("--json", "service", "delete", "web")
    assert json.loads(missing.stdout)["error"]["code"] == "unknown_service"


def _send_garbage(port: int) -> None:
    """Bytes that are not TLS: the connection is dropped, the server lives on."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(os.urandom(512) + b"\r\n\r\n")
        try:
            while raw.recv(4096):
                pass
        except OSError:
            pass


def _tls_without_certificate(controller: Controller, bundle: TrustBundle) -> None:
    context = ssl.create_default_context(cadata=bundle.ca_pem)
    response = httpx.get(f"{controller.url}/v1/me", verify=context, timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "client_cert_required"


def _garbage_http_inside_tls(controller: Controller, bundle: TrustBundle) -> None:
    context = ssl.create_default_context(cadata=bundle.ca_pem)
    with (
        socket.create_connection(("127.0.0.1", controller.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"\x00\x01\x02 not http at all\r\n\r\n")
        reply = tls.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
