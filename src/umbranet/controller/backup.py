"""`backup` and `restore` of a controller home on SQLite: the database and the keys, together.

A backup is one tar archive (mode 0600: it holds the CA key) with ``manifest.json`` first,
then every file of the home's ``controller/`` directory (keys, certificates, rotation state,
``config.json``), the admin identity file if there is one, and ``database.sqlite``: a
consistent copy of the database taken with SQLite's online backup API, so a running
controller need not stop. The manifest lists each member's SHA-256; `restore` checks them
all, and accepts only the members the manifest names as plain files under the home, before
it writes anything.

`restore` refuses a home that is initialised already (a live home) unless ``force``; with
``force`` the current ``controller/`` directory is kept beside the restored one
(``controller.replaced-<time>``), never deleted. A database kept in the home goes back into
the (possibly other) home it is restored to; one kept elsewhere goes back to its path.

PostgreSQL homes are refused (`BackupError` ``use_pg_dump``): the database is the shared
one, saved with ``pg_dump``, and the keys are in it sealed under the KEK, which must be saved
apart (docs/ha.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

import sqlalchemy as sa

from umbranet.controller.home import ControllerConfig
from umbranet.controller.store.db import normalise_url
from umbranet.home_layout import ControllerHome, HomeError

__all__ = ["FORMAT", "BackupError", "BackupSummary", "backup_home", "restore_home"]

FORMAT = "umbra-controller-backup-1"
_DATABASE = "database.sqlite"
_MANIFEST = "manifest.json"
_SKIP = frozenset({"umbra.db", "umbra.db-wal", "umbra.db-shm", "umbra.db-journal"})
_MAX_MEMBER = 4 << 30


class BackupError(HomeError):
    """A backup or restore that cannot be done; `code` says which refusal."""


@dataclass(frozen=True, slots=True)
class BackupSummary:
    path: Path
    files: list[str]
    database_bytes: int
    replaced: Path | None = None


def backup_home(root: str | os.PathLike[str], target: str | os.PathLike[str]) -> BackupSummary:
    """Write the archive of the home at `root` to `target` (which must not exist)."""
    home = ControllerHome(root)
    config = _config(home)
    db_path = _sqlite_path(config)
    if not db_path.exists():
        raise BackupError("home_invalid", f"the database {db_path} does not exist")
    members: dict[str, bytes] = {}
    for path in sorted(home.dir.iterdir()):
        if path.is_file() and path.name not in _SKIP:
            members[f"controller/{path.name}"] = path.read_bytes()
    if home.admin_file.exists():
        members["admin.json"] = home.admin_file.read_bytes()
    members[_DATABASE] = _snapshot(db_path)
    manifest = {
        "format": FORMAT,
        "trust_domain": config.trust_domain,
        "db_in_home": db_path.resolve() == home.db_path.resolve(),
        "db_path": str(db_path.resolve()),
        "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()},
    }
    target = Path(target)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle, tarfile.open(fileobj=handle, mode="w:gz") as tar:
            _add(tar, _MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
            for name, data in members.items():
                _add(tar, name, data)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return BackupSummary(target, sorted(members), len(members[_DATABASE]))


def restore_home(
    root: str | os.PathLike[str], source: str | os.PathLike[str], now: datetime, *, force: bool
) -> BackupSummary:
    """Restore the archive `source` into the home at `root` (see the module doc)."""
    home = ControllerHome(root)
    if home.is_initialised() and not force:
        raise BackupError(
            "home_in_use",
            f"{home.root} holds a controller home already; stop its controller and pass "
            "--force to replace it (the current one is kept beside it)",
        )
    manifest, members = _read(Path(source))
    config = ControllerConfig.from_json(members["controller/config.json"].decode())
    if manifest.get("db_in_home"):
        db_path = home.db_path
        config = ControllerConfig(
            config.trust_domain,
            config.address,
            home.default_db_url(),
            config.secrets,
            config.advertise,
        )
        members["controller/config.json"] = config.to_json().encode()
    else:
        db_path = Path(str(manifest.get("db_path", "")))
        if db_path.exists() and not force:
            raise BackupError("home_in_use", f"{db_path} exists; pass --force to replace it")
    home.root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".controller.restore.", dir=home.root))
    os.chmod(staging, 0o700)
    for name, data in members.items():
        if name.startswith("controller/"):
            _write(staging / PurePosixPath(name).name, data)
    replaced: Path | None = None
    if home.dir.exists():
        replaced = home.root / f"controller.replaced-{now.strftime('%Y%m%dT%H%M%S')}"
        home.dir.rename(replaced)
    staging.rename(home.dir)
    if db_path != home.db_path:
        for suffix in ("-wal", "-shm"):  # a stale WAL would be replayed over the restore
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    _write(db_path, members[_DATABASE])
    if "admin.json" in members:
        _write(home.admin_file, members["admin.json"])
    return BackupSummary(home.root, sorted(members), len(members[_DATABASE]), replaced)


def _config(home: ControllerHome) -> ControllerConfig:
    if not home.is_initialised():
        raise BackupError("not_initialised", f"{home.root} is not a controller home")
    return ControllerConfig.from_json(home.config_json.read_text())


def _sqlite_path(config: ControllerConfig) -> Path:
    url = normalise_url(config.db_url)
    if url.get_backend_name() != "sqlite":
        raise BackupError(
            "use_pg_dump",
            "this controller's database is PostgreSQL: back it up with pg_dump, and keep the "
            "key-encryption key file apart from the dump (docs/ha.md); a replica's home is "
            "re-made with `umbra controller join`",
        )
    if not url.database or url.database == ":memory:":
        raise BackupError("home_invalid", "the database is not a file")
    return Path(url.database)


def _snapshot(db_path: Path) -> bytes:
    """A consistent copy through SQLite's online backup API (writers may keep writing)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy.db"
        source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        return copy.read_bytes()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def _read(source: Path) -> tuple[dict[str, object], dict[str, bytes]]:
    """The manifest and the members it names, each checked; nothing else is read."""
    try:
        with tarfile.open(source, mode="r:gz") as tar:
            found: dict[str, bytes] = {}
            for info in tar.getmembers():
                if not info.isfile() or info.size > _MAX_MEMBER or not _safe(info.name):
                    raise BackupError("backup_invalid", f"unexpected member {info.name!r}")
                extracted = tar.extractfile(info)
                assert extracted is not None  # a regular file
                found[info.name] = extracted.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupError("backup_invalid", f"cannot read {source}: {exc}") from exc
    try:
        manifest = json.loads(found.pop(_MANIFEST))
        hashes = manifest["sha256"]
        ok = manifest["format"] == FORMAT and isinstance(hashes, dict)
    except (KeyError, ValueError, TypeError) as exc:
        raise BackupError("backup_invalid", "the archive has no valid manifest") from exc
    if not ok or set(hashes) != set(found):
        raise BackupError("backup_invalid", "the archive's members do not match its manifest")
    for name, data in found.items():
        if hashlib.sha256(data).hexdigest() != hashes[name]:
            raise BackupError("backup_invalid", f"{name} does not match its checksum")
    if _DATABASE not in found or "controller/config.json" not in found:
        raise BackupError("backup_invalid", "the archive lacks the database or config.json")
    _check_database(found[_DATABASE])
    return manifest, found


def _safe(name: str) -> bool:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        return False
    return name in {_MANIFEST, _DATABASE, "admin.json"} or (
        len(path.parts) == 2 and path.parts[0] == "controller"
    )


def _check_database(data: bytes) -> None:
    """The copy opens as SQLite with the schema's tables (before anything is replaced)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "check.db"
        path.write_bytes(data)
        engine = sa.create_engine(f"sqlite:///{path}")
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        except sa.exc.SQLAlchemyError as exc:
            raise BackupError("backup_invalid", f"the database copy is unusable: {exc}") from exc
        finally:
            engine.dispose()


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.restore")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
