"""`join_home`: a new controller replica's home, for a network whose secrets are in its database.

A replica's home holds only what is its own: ``config.json`` (trust domain, its own address,
the shared database URL, ``"secrets": "database"``), its TLS server key and certificate. The
CA, ticket and JWT keys are unsealed from the database at every start with the
key-encryption key (docs/ha.md); the admin identity file stays with the operator who ran
`init`. Joining reads the database and writes nothing to it, and checks the key first, so a
wrong key leaves neither a half-made home nor a changed database.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime

from umbranet.controller.home import (
    ControllerConfig,
    check_advertise,
    load_home,
    split_address,
    write_server_certificate,
)
from umbranet.controller.secrets import KeyEncryptionKey, SecretStore
from umbranet.controller.store import Database
from umbranet.home_layout import ControllerHome, HomeError
from umbranet.pki import CertificateAuthority, PkiError, generate_tls_key, key_to_pem

__all__ = ["join_home"]


def join_home(
    root: str | os.PathLike[str],
    now: datetime,
    *,
    db_url: str,
    kek: KeyEncryptionKey,
    address: str,
    advertise: str | None = None,
) -> ControllerHome:
    """Create a replica home at `root` serving the network whose database is `db_url`,
    listening on `address`, reached by clients at `advertise` (default: the address)."""
    home = ControllerHome(root)
    if home.dir.exists():
        raise HomeError(
            "already_initialised", f"{home.dir} already exists; join into another --home"
        )
    split_address(address)
    advertise = check_advertise(advertise)
    db = Database.open(db_url, migrate_schema=False)
    try:
        secrets = SecretStore(db, kek).load()
    finally:
        db.dispose()
    try:
        ca = CertificateAuthority.from_pem(secrets["ca.key"], secrets["ca.pem"])
    except PkiError as exc:
        raise HomeError("home_invalid", f"the database's CA does not load: {exc.reason}") from exc
    config = ControllerConfig(ca.trust_domain, address, db_url, "database", advertise)
    home.root.mkdir(parents=True, exist_ok=True)
    home.dir.mkdir(mode=0o700)
    try:
        fd = os.open(home.server_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_to_pem(generate_tls_key()))
        home.config_json.write_text(config.to_json())
        # Load as `run` will (this checks the whole home), then issue the TLS certificate.
        loaded = load_home(home.root, kek=kek, migrate_schema=False)
        try:
            write_server_certificate(home, loaded.authority, loaded.config, now)
        finally:
            loaded.db.dispose()
    except BaseException:
        shutil.rmtree(home.dir, ignore_errors=True)
        raise
    return home
