"""`umbra controller backup|restore` on SQLite homes: the archive is private, a restore
brings back the old state with keys that still work (the old admin identity is accepted,
enrollment and tickets work), an existing home is not replaced without --force, a tampered
archive is refused before anything is written, and a PostgreSQL home is told to use pg_dump."""

from __future__ import annotations

import io
import json
import stat
import tarfile
from pathlib import Path

from typer.testing import CliRunner

from tests.controller_harness import Harness
from umbranet.cli.main import app
from umbranet.controller.api import create_app
from umbranet.controller.home import ControllerConfig, init_home, load_home
from umbranet.controller.metrics import Metrics
from umbranet.pki import IdentityFile, verify_ticket
from umbranet.testing.clock import FakeClock

runner = CliRunner()


def _harness(home: Path, clock: FakeClock) -> Harness:
    loaded = load_home(home)
    metrics = Metrics()
    app_ = create_app(loaded.db, loaded.authority, clock=clock, metrics=metrics)
    return Harness(home, loaded, app_, clock, metrics, IdentityFile.load(home / "admin.json"))


def _names(h: Harness) -> set[str]:
    response = h.client(h.admin).get("/v1/identities")
    assert response.status_code == 200, response.text
    return {i["name"] for i in response.json()}


def _umbra(home: Path, *args: str) -> tuple[int, dict[str, object]]:
    result = runner.invoke(app, ["--home", str(home), "--json", *args])
    return result.exit_code, json.loads(result.output)


def test_restore_brings_back_the_old_state_with_working_keys(tmp_path: Path) -> None:
    clock = FakeClock()
    home = tmp_path / "home"
    init_home(home, clock())
    h = _harness(home, clock)
    h.create_identity("alice", ["eng"])
    archive = tmp_path / "backup.tar.gz"
    code, _ = _umbra(home, "controller", "backup", str(archive))
    assert code == 0
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600

    h.create_identity("bob")  # after the backup: gone once restored
    assert _names(h) >= {"alice", "bob"}
    h.loaded.db.dispose()  # the controller stops

    code, refused = _umbra(home, "controller", "restore", str(archive))
    assert code == 1
    assert refused["error"]["code"] == "home_in_use"  # type: ignore[index]
    code, done = _umbra(home, "controller", "restore", str(archive), "--force")
    assert code == 0, done
    assert Path(str(done["replaced"])).is_dir()  # the replaced home is kept

    restored = _harness(home, clock)
    try:
        assert "alice" in _names(restored)  # the old admin identity is still accepted
        assert "bob" not in _names(restored)
        assert stat.S_IMODE(restored.home.joinpath("controller", "ca.key").stat().st_mode) == 0o600
        # The restored keys sign: a new enrollment, and a ticket the old bundle verifies.
        restored.client(restored.admin).post(
            "/v1/services", json={"name": "db", "dial_attributes": ["eng"]}
        )
        carol = restored.new_device("carol", ["eng"])
        grant = restored.client(carol).post("/v1/tickets", json={"service": "db", "action": "dial"})
        assert grant.status_code == 200, grant.text
        ticket = verify_ticket(grant.json()["ticket"], h.loaded.authority.bundle, clock())
        assert ticket.spiffe_id == carol.spiffe_id
    finally:
        restored.loaded.db.dispose()


def test_restore_into_a_new_home_uses_that_homes_database(tmp_path: Path) -> None:
    clock = FakeClock()
    home = tmp_path / "old"
    init_home(home, clock())
    h = _harness(home, clock)
    h.create_identity("alice")
    h.loaded.db.dispose()
    archive = tmp_path / "b.tgz"
    assert _umbra(home, "controller", "backup", str(archive))[0] == 0
    other = tmp_path / "new"
    assert _umbra(other, "controller", "restore", str(archive))[0] == 0
    config = ControllerConfig.from_json((other / "controller" / "config.json").read_text())
    assert str(other / "controller" / "umbra.db") in config.db_url
    moved = _harness(other, clock)
    try:
        assert "alice" in _names(moved)
    finally:
        moved.loaded.db.dispose()


def test_a_tampered_archive_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    clock = FakeClock()
    home = tmp_path / "home"
    init_home(home, clock())
    archive = tmp_path / "b.tgz"
    assert _umbra(home, "controller", "backup", str(archive))[0] == 0
    with tarfile.open(archive, "r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    members["controller/ca.pem"] = members["controller/ca.pem"].replace(b"A", b"B", 1)
    forged = tmp_path / "forged.tgz"
    with tarfile.open(forged, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    target = tmp_path / "target"
    code, refused = _umbra(target, "controller", "restore", str(forged))
    assert code == 1
    assert refused["error"]["code"] == "backup_invalid"  # type: ignore[index]
    assert not (target / "controller").exists()


def test_a_postgresql_home_is_told_to_use_pg_dump(tmp_path: Path) -> None:
    home = tmp_path / "replica"
    (home / "controller").mkdir(parents=True)
    config = ControllerConfig("demo.umbra", "127.0.0.1:8443", "postgresql://umbra@db/umbra")
    (home / "controller" / "config.json").write_text(config.to_json())
    code, refused = _umbra(home, "controller", "backup", str(tmp_path / "x.tgz"))
    assert code == 1
    assert refused["error"]["code"] == "use_pg_dump"  # type: ignore[index]
    assert "pg_dump" in refused["error"]["message"]  # type: ignore[index]
    assert not (tmp_path / "x.tgz").exists()
