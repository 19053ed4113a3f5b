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
from umbranet.aio.controller_client import ControllerClient
from umbranet.cli.main import app as cli_app
from umbranet.controller.api import create_app
from umbranet.controller.home import LoadedController, init_home, load_home
from umbranet.controller.rotation import load_rotation, rotate_ticket_key
from umbranet.controller.server import TlsScopeApp
from umbranet.pki import PkiError, Signer, TrustBundle, verify_ticket
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
    refused = runner.invoke(cli_app, ["--home", str(home), "--json", "controller", "rotate", "ca"])
    assert json.loads(refused.output)["error"]["code"] == "not_supported"
