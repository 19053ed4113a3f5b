"""Identities in containers: renewal keeps working when the identity file cannot be written
(a read-only Secret mount), renewals go to a separate writable state file when given, and a
restart picks the newer certificate; ``Context.from_env`` for twelve-factor apps."""

from __future__ import annotations

import asyncio
import errno
import os
from datetime import timedelta
from pathlib import Path

import pytest

from umbranet.pki import IdentityFile
from umbranet.sdk import Context, UmbraError
from umbranet.sdk import context as context_module
from umbranet.testing import LocalNetwork
from umbranet.testing.clock import FakeClock
from umbranet.testing.network import LocalControlPlane


def _saved_identity(network: LocalNetwork, directory: Path) -> Path:
    path = directory / "app.json"
    network.identity("app", attributes=("client",)).save(path)
    return path


def test_renewal_survives_a_read_only_identity_file(
    network: LocalNetwork, arun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _saved_identity(network, tmp_path)
    before = path.read_bytes()

    def read_only(self: IdentityFile, target: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(target))

    monkeypatch.setattr(IdentityFile, "save", read_only)
    context = Context.from_file(path, control=network.control, renew=False)
    old_serial = context.identity.certificate.serial_number

    async def renew_twice() -> None:
        await context.renew_now()
        await context.renew_now()  # and again: one failed save stops nothing

    arun(renew_twice())
    assert context.identity.certificate.serial_number != old_serial
    assert context.counters["renewals"] == 2
    assert context.counters["renewal_save_failed"] == 2
    assert path.read_bytes() == before


def test_renewals_go_to_the_state_file_and_a_restart_uses_it(
    network: LocalNetwork, arun, tmp_path: Path
) -> None:
    path = _saved_identity(network, tmp_path)
    before = path.read_bytes()
    state = tmp_path / "state" / "app.json"
    state.parent.mkdir()
    context = Context.from_file(path, state_path=state, control=network.control, renew=False)
    arun(context.renew_now())
    renewed_serial = context.identity.certificate.serial_number

    assert path.read_bytes() == before  # the mounted file is never written
    assert IdentityFile.load(state).certificate.serial_number == renewed_serial
    assert os.stat(state).st_mode & 0o777 == 0o600
    restarted = Context.from_file(path, state_path=state, control=network.control, renew=False)
    assert restarted.identity.certificate.serial_number == renewed_serial


def test_a_state_file_of_another_identity_is_ignored(network: LocalNetwork, tmp_path: Path) -> None:
    path = _saved_identity(network, tmp_path)
    state = tmp_path / "other.json"
    network.identity("someone-else").save(state)
    context = Context.from_file(path, state_path=state, control=network.control, renew=False)
    assert context.identity.spiffe_id == IdentityFile.load(path).spiffe_id


def test_from_env(network: LocalNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UMBRA_IDENTITY", raising=False)
    with pytest.raises(UmbraError) as info:
        Context.from_env(control=network.control)
    assert info.value.code == "no_identity"

    path = _saved_identity(network, tmp_path)
    monkeypatch.setenv("UMBRA_IDENTITY", str(path))
    monkeypatch.setenv("UMBRA_IDENTITY_STATE", str(tmp_path / "state.json"))
    context = Context.from_env(control=network.control, renew=False)
    assert context.identity.spiffe_id.endswith("/app")
    assert context._state_path == tmp_path / "state.json"


def test_the_renewal_loop_survives_any_failure(
    network: LocalNetwork, arun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context_module, "RENEWAL_RETRY", 0.01)
    failures = iter([RuntimeError("controller hiccup"), OSError(errno.ECONNRESET, "reset")])

    class Flaky(LocalControlPlane):
        async def renew(self) -> IdentityFile:
            failure = next(failures, None)
            if failure is not None:
                raise failure
            return await super().renew()

    identity = network.identity("app", attributes=("client",))
    # A clock past half-life: every wait before renewing is zero.
    late = identity.certificate.not_valid_after_utc - timedelta(seconds=1)
    context = Context(
        identity,
        control=lambda i: Flaky(network, i),
        clock=FakeClock(late),
        report_posture=False,
    )

    async def main() -> dict[str, int]:
        async with context:
            for _ in range(500):  # bounded: 5 s at most
                if context.counters.get("renewals"):
                    break
                await asyncio.sleep(0.01)
            return dict(context.counters)

    counters = arun(main())
    assert counters["renewal_failed"] == 2
    assert counters["renewals"] >= 1
