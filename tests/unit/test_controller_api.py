"""The controller API: tickets, management, routers, authorization of callers, OpenAPI."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.controller_harness import Harness, error_code, make_harness
from umbranet.controller.store import Store
from umbranet.pki import Action, verify_ticket


@pytest.fixture
def h(tmp_path: Path, db_url: str) -> Iterator[Harness]:
    """Each test runs on SQLite and on PostgreSQL."""
    yield from make_harness(tmp_path, db_url)


def _service(h: Harness, name: str = "db", **extra: object) -> None:
    body = {"name": name, "dial_attributes": ["eng"], "bind_attributes": ["dbhost"], **extra}
    response = h.client(h.admin).post("/v1/services", json=body)
    assert response.status_code == 201, response.text


def test_bundle_and_openapi_are_public(h: Harness) -> None:
    client = h.client()
    bundle = client.get("/v1/bundle").json()
    assert bundle == h.loaded.authority.bundle.to_dict()
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/bundle", "/v1/enroll", "/v1/tickets", "/v1/identities", "/v1/services"} <= set(
        paths
    )


def test_allowed_ticket_is_signed_and_lists_reachable_routers(h: Harness) -> None:
    _service(h)
    alice = h.new_device("alice", ["eng"])
    router = h.client(h.admin).post("/v1/routers", json={"name": "r1"}).json()
    r1 = h.enroll(router["enrollment_token"])
    assert (
        h.client(r1).put("/v1/routers/self", json={"address": "127.0.0.1:7443"}).status_code == 200
    )

    response = h.client(alice).post("/v1/tickets", json={"service": "db", "action": "dial"})
    assert response.status_code == 200, response.text
    body = response.json()
    ticket = verify_ticket(body["ticket"], h.loaded.authority.bundle, h.clock())
    assert (ticket.spiffe_id, ticket.service, ticket.action) == (alice.spiffe_id, "db", Action.DIAL)
    assert body["routers"] == [
        {"name": "r1", "spiffe_id": "spiffe://demo.umbra/router/r1", "address": "127.0.0.1:7443"}
    ]


def test_denied_ticket_carries_the_verdict_reason(h: Harness) -> None:
    _service(h)
    alice = h.new_device("alice", ["eng"])
    response = h.client(alice).post("/v1/tickets", json={"service": "db", "action": "bind"})
    assert response.status_code == 403
    assert error_code(response) == "not_authorized"
    # The endpoint gets a decision id, not the rule or attribute that failed.
    message = response.json()["error"]["message"]
    assert "dbhost" not in message
    decision = message.split("decision ")[1].split(";")[0]
    looked_up = h.client(h.admin).get(f"/v1/policy/decisions/{decision}").json()
    assert "dbhost" in looked_up["reason"]
    assert (looked_up["identity"], looked_up["service"]) == (alice.spiffe_id, "db")
    assert (
        h.metrics.get(
            "umbra_access_verdicts_total", action="bind", outcome="deny", purpose="ticket"
        )
        == 1
    )


def test_unknown_service_and_bad_action(h: Harness) -> None:
    alice = h.new_device("alice", ["eng"])
    response = h.client(alice).post("/v1/tickets", json={"service": "nope", "action": "dial"})
    # Refused like a service that exists but is not allowed: no 403-vs-404 oracle.
    assert (response.status_code, error_code(response)) == (403, "not_authorized")
    response = h.client(alice).post("/v1/tickets", json={"service": "db", "action": "own"})
    assert (response.status_code, error_code(response)) == (422, "invalid_request")


def test_disabled_identity_is_refused_everywhere_and_can_come_back(h: Harness) -> None:
    _service(h)
    alice = h.new_device("alice", ["eng"])
    admin = h.client(h.admin)
    assert admin.post("/v1/identities/alice/disable").json()["enabled"] is False
    response = h.client(alice).post("/v1/tickets", json={"service": "db", "action": "dial"})
    assert (response.status_code, error_code(response)) == (403, "identity_disabled")
    assert error_code(h.client(alice).get("/v1/me")) == "identity_disabled"
    assert admin.post("/v1/identities/alice/enable").json()["enabled"] is True
    response = h.client(alice).post("/v1/tickets", json={"service": "db", "action": "dial"})
    assert response.status_code == 200


def test_me_lists_what_the_identity_may_do(h: Harness) -> None:
    _service(h, "db")
    _service(h, "web", dial_attributes=["all"], bind_attributes=["eng"])
    _service(h, "secret", dial_attributes=["root"], bind_attributes=["root"])
    alice = h.new_device("alice", ["eng"])
    me = h.client(alice).get("/v1/me").json()
    assert me["spiffe_id"] == alice.spiffe_id
    assert me["attributes"] == ["eng"]
    assert me["services"] == [
        {"name": "db", "actions": ["dial"]},
        {"name": "web", "actions": ["bind"]},
    ]


def test_management_needs_an_admin(h: Harness) -> None:
    alice = h.new_device("alice")
    for method, path in [
        ("GET", "/v1/identities"),
        ("POST", "/v1/services"),
        ("DELETE", "/v1/services/db"),
        ("POST", "/v1/routers"),
        ("GET", "/v1/metrics"),
    ]:
        response = h.client(alice).request(method, path, json={"name": "x"})
        assert (response.status_code, error_code(response)) == (403, "admin_required"), path
        response = h.client().request(method, path, json={"name": "x"})
        assert (response.status_code, error_code(response)) == (401, "client_cert_required")


def test_only_routers_register_addresses(h: Harness) -> None:
    alice = h.new_device("alice")
    response = h.client(alice).put("/v1/routers/self", json={"address": "127.0.0.1:1"})
    assert (response.status_code, error_code(response)) == (403, "router_required")


def test_router_address_is_validated(h: Harness) -> None:
    token = h.client(h.admin).post("/v1/routers", json={"name": "r1"}).json()["enrollment_token"]
    r1 = h.enroll(token)
    for bad in ("nohost", "127.0.0.1:0", "127.0.0.1:99999", "bad host:1"):
        response = h.client(r1).put("/v1/routers/self", json={"address": bad})
        assert (response.status_code, error_code(response)) == (400, "invalid_address"), bad
    listed = h.client(r1).get("/v1/routers").json()
    assert listed == [
        {
            "name": "r1",
            "spiffe_id": "spiffe://demo.umbra/router/r1",
            "address": None,
            "last_seen": None,
        }
    ]


def test_identity_management(h: Harness) -> None:
    admin = h.client(h.admin)
    created = admin.post(
        "/v1/identities", json={"name": "build-1", "kind": "workload", "attributes": ["ci", "ci"]}
    )
    assert created.status_code == 201
    identity = created.json()["identity"]
    assert identity["spiffe_id"] == "spiffe://demo.umbra/workload/build-1"
    assert identity["attributes"] == ["ci"]
    assert identity["enrolled"] is False
    assert created.json()["enrollment_token"].startswith("ue1.")

    duplicate = admin.post("/v1/identities", json={"name": "build-1"})
    assert (duplicate.status_code, error_code(duplicate)) == (409, "name_taken")
    bad_name = admin.post("/v1/identities", json={"name": "Bad Name"})
    assert (bad_name.status_code, error_code(bad_name)) == (400, "invalid_name")
    bad_attr = admin.post("/v1/identities", json={"name": "x", "attributes": ["has space"]})
    assert (bad_attr.status_code, error_code(bad_attr)) == (400, "invalid_attribute")
    bad_kind = admin.post("/v1/identities", json={"name": "x", "kind": "router"})
    assert bad_kind.status_code == 422

    names = [i["name"] for i in admin.get("/v1/identities").json()]
    assert names == ["admin", "build-1"]
    assert admin.get("/v1/identities/build-1").json()["kind"] == "workload"
    missing = admin.get("/v1/identities/nobody")
    assert (missing.status_code, error_code(missing)) == (404, "unknown_identity")
    assert error_code(admin.post("/v1/identities/nobody/disable")) == "unknown_identity"


def test_service_management(h: Harness) -> None:
    admin = h.client(h.admin)
    body = {
        "name": "db",
        "dial_attributes": ["eng"],
        "bind_attributes": ["dbhost"],
        "host_address": "tcp://127.0.0.1:5432",
        "intercepts": [{"host": "DB.umbra", "port": 5432}],
    }
    created = admin.post("/v1/services", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["intercepts"] == [{"host": "db.umbra", "port": 5432}]
    assert error_code(admin.post("/v1/services", json=body)) == "name_taken"
    for address in ("udp://x", "sctp://127.0.0.1:1", "127.0.0.1:5432", "tcp://h:99999"):
        bad_host = admin.post("/v1/services", json={**body, "name": "x", "host_address": address})
        assert (bad_host.status_code, error_code(bad_host)) == (400, "invalid_host_address")
    udp = {**body, "name": "dns", "host_address": "udp://127.0.0.1:53", "intercepts": []}
    assert admin.post("/v1/services", json=udp).status_code == 201
    assert admin.delete("/v1/services/dns").status_code == 204
    bad_intercept = admin.post(
        "/v1/services", json={**body, "name": "y", "intercepts": [{"host": "x", "port": 0}]}
    )
    assert error_code(bad_intercept) == "invalid_intercept"
    assert [s["name"] for s in admin.get("/v1/services").json()] == ["db"]
    assert admin.delete("/v1/services/db").status_code == 204
    gone = admin.delete("/v1/services/db")
    assert (gone.status_code, error_code(gone)) == (404, "unknown_service")
    assert admin.get("/v1/services").json() == []


def test_admin_changes_are_audited(h: Harness) -> None:
    admin = h.client(h.admin)
    h.create_identity("alice", ["eng"])
    admin.post("/v1/identities/alice/disable")
    admin.post("/v1/services", json={"name": "db"})
    admin.delete("/v1/services/db")
    admin.post("/v1/routers", json={"name": "r1"})
    with h.loaded.db.session() as session:
        events = [(e.actor, e.action, e.target) for e in reversed(Store(session).audit_events())]
    actor = h.admin.spiffe_id
    assert events == [
        ("controller", "controller.init", "admin"),
        (actor, "identity.create", "alice"),
        (actor, "identity.disable", "alice"),
        (actor, "service.create", "db"),
        (actor, "service.delete", "db"),
        (actor, "router.create", "r1"),
    ]


def test_tickets_expire_on_the_injected_clock(h: Harness) -> None:
    _service(h)
    alice = h.new_device("alice", ["eng"])
    body = h.client(alice).post("/v1/tickets", json={"service": "db", "action": "dial"}).json()
    h.clock.advance(timedelta(minutes=11))
    from umbranet.pki import PkiError

    with pytest.raises(PkiError) as caught:
        verify_ticket(body["ticket"], h.loaded.authority.bundle, h.clock())
    assert caught.value.code == "ticket_expired"


def test_metrics_are_served_to_admins(h: Harness) -> None:
    h.client().get("/v1/me")
    counters = h.client(h.admin).get("/v1/metrics").json()["counters"]
    assert counters['umbra_api_errors_total{code="client_cert_required"}'] == 1


def test_a_replica_behind_the_schema_is_not_ready(h: Harness) -> None:
    assert h.client().get("/healthz").json() == {"status": "alive"}
    assert h.client().get("/readyz").status_code == 200
    with h.loaded.db.engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0005'"))
    response = h.client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["schema"] == "at 0005"
    assert h.client().get("/healthz").status_code == 200
