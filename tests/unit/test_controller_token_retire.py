"""Stale enrollment tokens: every new token, enrollment and revocation retires the identity's
earlier unused tokens, and a token for a lost key revokes the old certificates."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.controller_harness import Harness, enroll_request, error_code, make_harness
from umbranet.controller.service.tokens import mint_enrollment_token
from umbranet.controller.store import Enrollment, Store
from umbranet.pki import read_enrollment_token_unverified


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def _new_token(h: Harness, name: str) -> str:
    response = h.client(h.admin).post(f"/v1/identities/{name}/enrollments")
    assert response.status_code == 201, response.text
    token: str = response.json()["enrollment_token"]
    return token


def test_a_token_issued_before_revoke_cannot_enroll_after_it(h: Harness) -> None:
    h.new_device("alice")
    stale = _new_token(h, "alice")  # e.g. leaked from the admin's shell history
    response = h.client(h.admin).post("/v1/identities/alice/revoke")
    fresh = response.json()["enrollment_token"]
    attack, _ = enroll_request(h.client(), stale)
    assert attack.status_code == 401
    assert error_code(attack) == "token_retired"
    assert h.metrics.get("umbra_api_errors_total", code="token_retired") == 1
    # The owner's fresh token still works: the stale one did not lock them out.
    owner = h.enroll(fresh)
    assert h.client(owner).get("/v1/me").status_code == 200


def test_a_new_token_retires_the_earlier_unused_one(h: Harness) -> None:
    first = h.create_identity("alice")
    second = _new_token(h, "alice")
    response, _ = enroll_request(h.client(), first)
    assert error_code(response) == "token_retired"
    h.enroll(second)


def test_enrolling_retires_every_other_unused_token(h: Harness) -> None:
    h.create_identity("alice")
    other = _new_token(h, "alice")
    # A token minted beside the route (two admins racing) is retired by the enrollment too.
    with h.loaded.db.session() as session:
        store = Store(session)
        identity = store.identity_by_name("alice")
        assert identity is not None
        racing = mint_enrollment_token(store, h.loaded.authority, identity, h.clock())
        store.add(  # re-open `other` as if minted after: only the enrollment retires it now
            Enrollment(
                token_id=_token_id(other) + "x",
                identity_id=identity.id,
                expires_at=h.clock() + timedelta(hours=1),
                created_at=h.clock(),
            )
        )
        unused_before = _unused(store, identity.id)
    assert unused_before == 2
    h.enroll(racing)
    with h.loaded.db.session() as session:
        identity = Store(session).identity_by_name("alice")
        assert identity is not None
        assert _unused(Store(session), identity.id) == 0


def _token_id(token: str) -> str:
    return read_enrollment_token_unverified(token).token_id


def _unused(store: Store, identity_id: int) -> int:
    return sum(
        1
        for e in store.session.query(Enrollment).filter_by(identity_id=identity_id)
        if e.used_at is None and e.retired_at is None
    )


def test_token_for_a_lost_key_revokes_the_old_certificate_and_bumps_the_epoch(
    h: Harness,
) -> None:
    alice = h.new_device("alice")
    context = h.app.state.umbra
    before = context.events.epoch
    _new_token(h, "alice")
    assert context.events.epoch > before
    response = h.client(alice).get("/v1/me")
    assert response.status_code == 401
    assert error_code(response) == "cert_revoked"


def test_tokens_of_other_identities_are_untouched(h: Harness) -> None:
    bob_token = h.create_identity("bob")
    h.new_device("alice")
    h.client(h.admin).post("/v1/identities/alice/revoke")
    h.enroll(bob_token)
