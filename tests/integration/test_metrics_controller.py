"""The controller's ``GET /metrics``, scraped as an admin while identities enroll, renew and ask
for tickets through the real API (the in-process harness: real routes, database and PKI)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.controller_harness import Harness, error_code, make_harness
from tests.scrape import Scrape
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
    csr = make_csr(generate_tls_key()).public_bytes(serialization.Encoding.PEM).decode()
    assert h.client(alice).post("/v1/renew", json={"csr_pem": csr}).status_code == 200

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
