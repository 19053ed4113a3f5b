"""Bad input gets a clear JSON error with a code, is logged once and counted, and the
controller keeps serving."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controller_harness import Harness, error_code, make_harness
from umbranet.controller.api.middleware import MAX_BODY
from umbranet.controller.api.routes_policy import POLICY_TEXT_MAX


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"{not json", JSON, 400, "malformed_json"),
        (b"\x00\xff\xfe garbage", JSON, 400, "malformed_json"),
        (b'{"token": 1}', JSON, 422, "invalid_request"),
        (
            b'{"token": "a", "csr_pem": "b", "noise_public_key": "c", "extra": 1}',
            JSON,
            422,
            "invalid_request",
        ),
        (b"[]", JSON, 422, "invalid_request"),
        (b"token=x", {"content-type": "application/x-www-form-urlencoded"}, 422, "invalid_request"),
    ],
)
def test_bad_bodies_get_a_coded_error(
    h: Harness, body: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    response = h.client().post("/v1/enroll", content=body, headers=headers)
    assert response.status_code == status
    assert error_code(response) == code
    assert h.client().get("/v1/bundle").status_code == 200


def test_a_huge_body_is_refused_before_it_is_read(h: Harness) -> None:
    response = h.client().post("/v1/enroll", content=b"x" * (MAX_BODY + 1), headers=JSON)
    assert (response.status_code, error_code(response)) == (413, "body_too_large")


def test_a_huge_chunked_body_is_refused(h: Harness) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"x" * 1024

    response = h.client().post("/v1/enroll", content=chunks(), headers=JSON)
    assert (response.status_code, error_code(response)) == (413, "body_too_large")


def test_unknown_routes_and_methods(h: Harness) -> None:
    response = h.client().get("/v1/nothing-here")
    assert (response.status_code, error_code(response)) == (404, "not_found")
    response = h.client().delete("/v1/bundle")
    assert (response.status_code, error_code(response)) == (405, "method_not_allowed")


def test_each_refusal_is_logged_once_and_counted(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="umbranet"):
        h.client().post("/v1/enroll", content=b"{", headers=JSON)
    refusals = [r for r in caplog.records if "request refused" in r.getMessage()]
    assert len(refusals) == 1
    assert "code=malformed_json" in refusals[0].getMessage()
    assert h.metrics.get("umbra_api_errors_total", code="malformed_json") == 1


def test_messages_never_echo_the_token(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    secret = "ue1.SECRETSECRET.SIG"
    with caplog.at_level(logging.DEBUG, logger="umbranet"):
        response = h.client().post(
            "/v1/enroll",
            json={"token": secret, "csr_pem": "x", "noise_public_key": "y", "bad": 1},
        )
        h.client().post(
            "/v1/enroll", json={"token": secret, "csr_pem": "x", "noise_public_key": "y"}
        )
    assert "SECRET" not in response.text
    assert all("SECRET" not in r.getMessage() for r in caplog.records)


def test_an_unexpected_failure_is_a_500_and_the_server_keeps_serving(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi import APIRouter

    boom = APIRouter()

    @boom.get("/v1/boom")
    def explode() -> None:
        raise RuntimeError("kaboom")

    h.app.include_router(boom)
    with caplog.at_level(logging.ERROR, logger="umbranet"):
        response = h.client().get("/v1/boom")
    assert (response.status_code, error_code(response)) == (500, "internal_error")
    assert "kaboom" not in response.text
    assert len([r for r in caplog.records if r.exc_info]) == 1
    assert h.client().get("/v1/bundle").status_code == 200


def test_a_policy_larger_than_the_general_cap_is_taken_up_to_its_own_limit(h: Harness) -> None:
    """A 5,000-rule policy is about 1 MiB of JSON: the general 256 KiB cap must not refuse it,
    while a body past the policy route's own limit still is."""
    admin = h.client(h.admin)
    padded = "{" + " " * (4 * MAX_BODY) + "}"
    assert admin.put("/v1/policy", json={"text": padded}).status_code == 200
    assert admin.post("/v1/policy/test", json={"text": padded}).status_code == 200
    too_long = "{" + " " * (2 * POLICY_TEXT_MAX + 128 * 1024) + "}"
    response = admin.put("/v1/policy", content=json.dumps({"text": too_long}), headers=JSON)
    assert (response.status_code, error_code(response)) == (413, "body_too_large")
