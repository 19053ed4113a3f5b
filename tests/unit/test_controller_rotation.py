"""Ticket-key rotation with an overlap: signed, versioned bundle updates reach identities at
renewal, old tickets keep verifying during the overlap, forged or replayed updates do not."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from tests.controller_harness import FakeClock
from umbranet.cli.main import app as cli_app
from umbranet.client.controller import ControllerClient
from umbranet.controller.api import create_app
from umbranet.controller.home import LoadedController, init_home, load_home
from umbranet.controller.rotation import advance_ca, load_rotation, rotate_ca, rotate_ticket_key
from umbranet.controller.server import TlsScopeApp, build_server
from umbranet.pki import IdentityFile, PkiError, Signer, TrustBundle, verify_svid, verify_ticket
from umbranet.pki.bundle_update import apply_bundle_updates, verify_bundle_update
from umbranet.pki.tickets import Action


def _transport(loaded: LoadedController, clock: FakeClock, identity: object) -> httpx.ASGITransport:
    app = create_app(loaded.db, loaded.authority, clock=clock)
    der = identity.certificate.public_bytes(serialization.Encoding.DER)  # type: ignore[attr-defined]
    return httpx.ASGITransport(app=TlsScopeApp(app, der))


def test_a_rotation_reaches_an_identity_at_renewal_and_old_tickets_still_verify(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    home, admin = init_home(tmp_path / "home", clock())
    before = load_home(tmp_path / "home")
    old_ticket = before.authority.signer.sign_ticket(admin.spiffe_id, "db", Action.DIAL, clock())[1]
    before.db.dispose()

    rotate_ticket_key(home.dir, clock(), timedelta(hours=1))
    after = load_home(tmp_path / "home")  # the restarted controller
    try:
        bundle = after.authority.bundle
        assert bundle.version == 1 and len(bundle.ticket_keys) == 2
        new_ticket = after.authority.signer.sign_ticket(
            admin.spiffe_id, "db", Action.DIAL, clock()
        )[1]
        with pytest.raises(PkiError):  # the admin's enrollment-time bundle lacks the new key
            verify_ticket(new_ticket, admin.bundle, clock())

        async def renew() -> object:
            async with ControllerClient(admin, transport=_transport(after, clock, admin)) as c:
                return await c.renew()

        renewed = asyncio.run(renew())
        assert renewed.bundle.version == 1  # type: ignore[attr-defined]
        verify_ticket(new_ticket, renewed.bundle, clock())  # type: ignore[attr-defined]
        # During the overlap, tickets of the old key (live streams' grants) still verify.
        verify_ticket(old_ticket, renewed.bundle, clock())  # type: ignore[attr-defined]
    finally:
        after.db.dispose()

    # After the overlap the old key is dropped, in a newer version the v1 holders accept.
    later = load_rotation(home.dir, clock() + timedelta(hours=2))
    assert later.retired == () and later.bundle_version == 2


def _bundles() -> tuple[Signer, Signer, TrustBundle, TrustBundle]:
    from datetime import UTC, datetime

    from umbranet.pki import CertificateAuthority

    now = datetime.now(UTC)
    ca = CertificateAuthority.create("t.umbra", now)
    old, new = Signer.generate(), Signer.generate()
    v0 = TrustBundle.from_certificates("t.umbra", [ca.certificate], [old.public_key])
    v1 = TrustBundle.from_certificates(
        "t.umbra", [ca.certificate], [new.public_key, old.public_key], 1
    )
    return old, new, v0, v1


def test_bundle_updates_must_be_signed_by_a_trusted_key_and_newer() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    old, new, v0, v1 = _bundles()
    assert verify_bundle_update(old.sign_bundle_update(v1, now), v0) == v1
    refusals = {
        "signed by a key v0 does not trust": new.sign_bundle_update(v1, now),
        "signed by an attacker": Signer.generate().sign_bundle_update(v1, now),
        "not newer (replay)": old.sign_bundle_update(v0, now),
        "tampered": old.sign_bundle_update(v1, now)[:-4] + "AAAA",
        "garbage": "ub1.x.y",
    }
    for why, token in refusals.items():
        with pytest.raises(PkiError) as caught:
            verify_bundle_update(token, v0)
        assert caught.value.code == "bundle_invalid", why
    # A holder takes the newest update it can verify and ignores the rest.
    tokens = [*refusals.values(), 42, old.sign_bundle_update(v1, now)]
    assert apply_bundle_updates(tokens, v0) == v1
    assert apply_bundle_updates(list(refusals.values()), v0) is v0


def test_the_cli_rotates_the_ticket_key(tmp_path: Path) -> None:
    runner = CliRunner()
    home = tmp_path / "home"
    assert runner.invoke(cli_app, ["--home", str(home), "controller", "init"]).exit_code == 0
    result = runner.invoke(
        cli_app, ["--home", str(home), "--json", "controller", "rotate", "ticket-key"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rotated"] == "ticket-key"
    assert (home / "controller" / "rotation.json").exists()
    refused = runner.invoke(
        cli_app, ["--home", str(home), "--json", "controller", "rotate", "keys"]
    )
    assert json.loads(refused.output)["error"]["code"] == "not_supported"


def test_a_ca_rotation_announces_the_new_ca_before_it_issues(tmp_path: Path) -> None:
    clock = FakeClock()
    home, admin = init_home(tmp_path / "home", clock())
    old_ca_pem = (home.dir / "ca.pem").read_bytes()
    rotate_ca(home.dir, clock(), "demo.umbra", timedelta(hours=1))

    def renew(loaded: LoadedController, who: IdentityFile) -> IdentityFile:
        async def call() -> IdentityFile:
            async with ControllerClient(who, transport=_transport(loaded, clock, who)) as c:
                return await c.renew()

        return asyncio.run(call())

    # Phase 1: the new CA is in the bundle, the old one still issues.
    announced = load_home(tmp_path / "home")
    try:
        bundle = announced.authority.bundle
        assert (bundle.version, len(bundle.ca_certificates)) == (1, 2)
        assert (
            announced.authority.ca.certificate.public_bytes(serialization.Encoding.PEM)
            == old_ca_pem
        )
        phase1 = renew(announced, admin)
        assert len(phase1.bundle.ca_certificates) == 2
        build_server(announced, port=0)  # the TLS layer trusts client certs of both CAs
        assert (home.dir / "trust.pem").read_text().count("BEGIN CERTIFICATE") == 2
    finally:
        announced.db.dispose()

    # Phase 2 (the overlap is over): the new CA issues; the old one is trusted, not used.
    assert advance_ca(home.dir, clock() + timedelta(hours=2))
    switched = load_home(tmp_path / "home")
    try:
        bundle = switched.authority.bundle
        assert bundle.version == 2
        assert bundle.ca_certificates[0] != phase1.bundle.ca_certificates[0]
        assert (home.dir / "ca.pem").read_bytes() != old_ca_pem  # the old key is gone
        phase2 = renew(switched, phase1)
        # A peer that only ever got the phase-1 bundle already trusts the new certificates,
        # and certificates from the old CA still verify under the new bundle.
        verify_svid(phase2.certificate_chain, phase1.bundle, clock())
        verify_svid(admin.certificate_chain, phase2.bundle, clock())
        assert phase2.bundle.version == 2
    finally:
        switched.db.dispose()
