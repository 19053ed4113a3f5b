"""The controller's ``GET /metrics``, scraped as an admin while identities enroll, renew and ask
for tickets through the real API (the in-process harness: real routes, database and PKI)."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from tests.conftest import free_port
from tests.controller_harness import Harness, error_code, make_harness, noise_proof
from tests.integration.test_controller_process import Controller
from tests.integration.test_controller_process import _wait_until_serving as wait_until_serving
from tests.scrape import Scrape
from umbranet.aio.tls import load_identity
from umbranet.pki import generate_tls_key, make_csr


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def scrape(h: Harness) -> Scrape:
    response = h.client(h.admin).get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Scrape.parse(response.text)


def test_metrics_need_an_admin(h: Harness) -> None:
    alice = h.new_device("alice")
    assert error_code(h.client().get("/metrics")) == "client_cert_required"
    assert error_code(h.client(alice).get("/metrics")) == "admin_required"


def test_credentials_and_verdicts_move_as_identities_use_the_api(h: Harness) -> None:
    response = h.client(h.admin).post(
        "/v1/services", json={"name": "db", "dial_attributes": ["eng"], "bind_attributes": ["x"]}
    )
    assert response.status_code == 201
    before = scrape(h)
    alice = h.new_device("alice", ["eng"])

    granted = h.client(alice).post("/v1/tickets", json={"service": "db", "action": "dial"})
    refused = h.client(alice).post("/v1/tickets", json={"service": "db", "action": "bind"})
    assert (granted.status_code, refused.status_code) == (200, 403)
    request = make_csr(generate_tls_key())
    csr = request.public_bytes(serialization.Encoding.PEM).decode()
    proof = noise_proof(h.client(), alice.noise_private_key, request)
    assert h.client(alice).post("/v1/renew", json={"csr_pem": csr, **proof}).status_code == 200

    after = scrape(h)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("umbra_enrollments_total", kind="device") == 1
    assert moved("umbra_renewals_total", kind="device") == 1
    assert moved("umbra_tickets_issued_total", action="dial") == 1
    assert moved("umbra_tickets_issued_total", action="bind") == 0
    verdict = {"purpose": "ticket"}
    assert moved("umbra_access_verdicts_total", action="dial", outcome="allow", **verdict) == 1
    assert moved("umbra_access_verdicts_total", action="bind", outcome="deny", **verdict) == 1
    assert moved("umbra_api_errors_total", code="not_authorized") == 1


def test_requests_are_counted_by_route_template_method_and_status(h: Harness) -> None:
    alice = h.new_device("alice")
    before = scrape(h)
    for path in ("/v1/identities/alice", "/v1/identities/nobody", "/no/such/thing"):
        h.client(h.admin).get(path)
    h.client(alice).get("/v1/me")
    after = scrape(h)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    requests = "umbra_api_requests_total"
    one = {"route": "/v1/identities/{name}", "method": "GET"}
    assert moved(requests, status="200", **one) == 1
    assert moved(requests, status="404", **one) == 1
    assert moved(requests, route="unmatched", method="GET", status="404") == 1
    assert moved(requests, route="/v1/me", method="GET", status="200") == 1
    # No series is keyed by a raw path a caller chose.
    assert not any("nobody" in labels.get("route", "") for labels in after.labels_of(requests))
    latency = "umbra_api_request_duration_seconds_count"
    assert moved(latency, route="/v1/me", method="GET") == 1


def test_the_epoch_gauge_follows_revocations(h: Harness) -> None:
    h.new_device("alice")
    before = scrape(h).value("umbra_epoch")
    assert before == h.app.state.umbra.events.epoch
    assert h.client(h.admin).post("/v1/identities/alice/disable").status_code == 200
    after = scrape(h).value("umbra_epoch")
    assert after > before
    assert after == h.app.state.umbra.events.epoch


def test_the_json_view_still_serves_the_counters(h: Harness) -> None:
    h.client().get("/v1/me")
    counters = h.client(h.admin).get("/v1/metrics").json()["counters"]
    assert counters['umbra_api_errors_total{code="client_cert_required"}'] == 1
    assert all(isinstance(value, int) for value in counters.values())


@pytest.mark.slow
def test_a_controller_process_serves_metrics_over_mtls_and_logs_json(tmp_path: Path) -> None:
    """The real server: /metrics read with an admin's certificate over TLS; with
    ``--log-format json`` every log line is a JSON object carrying the refusal's code."""
    home, port = tmp_path / "home", free_port()
    umbra = [sys.executable, "-m", "umbranet.cli.main", "--home", str(home)]
    init = [*umbra, "controller", "init", "--address", f"127.0.0.1:{port}"]
    subprocess.run(init, capture_output=True, check=True, timeout=60)
    log = tmp_path / "controller.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*umbra, "--log-format", "json", "controller", "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    controller = Controller(home, port, process, log)
    try:
        wait_until_serving(controller)
        admin = controller.admin()
        tls = ssl.create_default_context(cadata=admin.bundle.ca_pem)
        load_identity(tls, admin)
        with httpx.Client(verify=tls, trust_env=False, timeout=30) as http:
            assert http.get(f"{controller.url}/v1/me", headers={}).status_code == 200
            text = http.get(f"{controller.url}/metrics").text
        with httpx.Client(verify=False, trust_env=False, timeout=30) as anonymous:
            assert anonymous.get(f"{controller.url}/metrics").status_code == 401
        scrape = Scrape.parse(text)
        me = {"route": "/v1/me", "method": "GET", "status": "200"}
        assert scrape.value("umbra_api_requests_total", **me) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    refusals = [entry for entry in lines if entry.get("code") == "client_cert_required"]
    assert len(refusals) == 1 and refusals[0]["level"] == "WARNING", lines
