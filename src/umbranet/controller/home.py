"""The controller's home directory: create it once (`init_home`), load it at every start.

Layout under the home ``D`` (see docs/architecture.md)::

    D/controller/ca.key  ca.pem  signer.key  jwt.key  server.key  server.pem  config.json  umbra.db
    D/admin.json         the admin identity file (mode 0600), used by the management CLI

Private keys are written 0600 in a 0700 directory, created exclusively (an existing file is
never overwritten); with a key passphrase configured (`pki.keys.key_passphrase`) the CA,
signer and JWT keys are stored encrypted. ``server.key`` stays plain (0600): the HTTPS server
reads it by path. ``config.json`` is ``{"trust_domain", "address", "db_url"}``, plus
``"secrets": "database"`` for keys kept in the database and ``"advertise"`` for a URL other
than the listen address.
``jwt.key`` (the ES256 JWT-SVID key) is created at load when missing, so homes made before
JWT-SVIDs existed gain one.
`init_home` also creates the database, runs the migrations and enrolls the ``admin``
identity directly (its keys generated here, never sent anywhere).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization

from umbranet.controller.rotation import advance_ca, load_rotation
from umbranet.controller.secrets import (
    KEK_ENV,
    KEK_FILE_ENV,
    NETWORK_SECRETS,
    KeyEncryptionKey,
    SecretStore,
    load_kek,
)
from umbranet.controller.service import Authority
from umbranet.controller.service.certificates import issue_for_identity
from umbranet.controller.service.identities import new_identity_row
from umbranet.controller.store import Database, Store, migrate
from umbranet.home_layout import ControllerHome, HomeError
from umbranet.pki import (
    CertificateAuthority,
    IdentityFile,
    PkiError,
    Signer,
    SpiffeId,
    generate_noise_keypair,
    generate_tls_key,
    key_from_pem,
    key_to_pem,
    make_csr,
    validate_trust_domain,
)
from umbranet.pki.jwt_svid import JwtAuthority
from umbranet.pki.keys import key_passphrase, read_private_key, write_private_key

__all__ = [
    "ADMIN_NAME",
    "DEFAULT_ADDRESS",
    "DEFAULT_TRUST_DOMAIN",
    "SERVER_CERT_LIFETIME",
    "ControllerConfig",
    "ControllerHome",
    "HomeError",
    "LoadedController",
    "init_home",
    "load_home",
]

DEFAULT_TRUST_DOMAIN = "demo.umbra"
DEFAULT_ADDRESS = "127.0.0.1:8443"
ADMIN_NAME = "admin"
SERVER_CERT_LIFETIME = timedelta(days=30)
"""The TLS server certificate is reissued at every start, so it only has to outlive one run."""


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    trust_domain: str
    address: str
    db_url: str
    secrets: str = "files"
    """Where the CA, ticket and JWT keys live: ``files`` in the home, or ``database`` (sealed
    under a key-encryption key, shared by replicas; `controller.secrets`)."""
    advertise: str | None = None
    """The URL put in tokens and identity files, when it is not the listen address (a
    wildcard bind, a load balancer, NAT): ``https://HOST[:PORT]``."""

    @property
    def host(self) -> str:
        return split_address(self.address)[0]

    @property
    def port(self) -> int:
        return split_address(self.address)[1]

    @property
    def url(self) -> str:
        """The URL clients use: `advertise`, else the listen address (a wildcard one is
        reached on loopback)."""
        if self.advertise:
            return self.advertise
        host = self.host
        if host in {"0.0.0.0", "::", ""}:  # a wildcard listen address
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.port}"

    def to_json(self) -> str:
        data = {"trust_domain": self.trust_domain, "address": self.address, "db_url": self.db_url}
        if self.secrets != "files":
            data["secrets"] = self.secrets
        if self.advertise:
            data["advertise"] = self.advertise
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ControllerConfig:
        try:
            data: Any = json.loads(text)
            config = cls(
                str(data["trust_domain"]),
                str(data["address"]),
                str(data["db_url"]),
                str(data.get("secrets", "files")),
                check_advertise(data.get("advertise")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise HomeError("config_invalid", f"config.json is not valid: {exc}") from exc
        if config.secrets not in {"files", "database"}:
            raise HomeError("config_invalid", f"config.json: unknown secrets {config.secrets!r}")
        split_address(config.address)
        return config


@dataclass(slots=True)
class LoadedController:
    """Everything `server.run` needs, loaded and checked."""

    home: ControllerHome
    config: ControllerConfig
    authority: Authority
    db: Database


def init_home(
    root: str | os.PathLike[str],
    now: datetime,
    *,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    address: str = DEFAULT_ADDRESS,
    db_url: str | None = None,
    kek: KeyEncryptionKey | None = None,
    advertise: str | None = None,
) -> tuple[ControllerHome, IdentityFile]:
    """Create CA, signer, server certificate, database and the admin identity file.

    `db_url` picks the database (default: ``umbra.db`` in the home, SQLite); a PostgreSQL
    database must exist and be empty. With `kek`, the network's secrets go into the database,
    sealed under it, instead of into files, so replicas can `join` (`controller.replica`).
    """
    home = ControllerHome(root)
    for existing in (home.dir, home.admin_file):
        if existing.exists():
            raise HomeError(
                "already_initialised",
                f"{existing} already exists; this home is initialised (use another --home)",
            )
    try:
        validate_trust_domain(trust_domain)
    except PkiError as exc:
        raise HomeError("invalid_trust_domain", exc.reason) from exc
    split_address(address)
    advertise = check_advertise(advertise)
    home.root.mkdir(parents=True, exist_ok=True)
    home.dir.mkdir(mode=0o700)
    try:
        admin = _populate(
            home, now, trust_domain=trust_domain, address=address, db_url=db_url, kek=kek,
            advertise=advertise,
        )  # fmt: skip
    except BaseException:
        # Leave no half-made home behind: `init` refuses to touch an existing one.
        shutil.rmtree(home.dir, ignore_errors=True)
        home.admin_file.unlink(missing_ok=True)
        raise
    return home, admin


def _populate(
    home: ControllerHome,
    now: datetime,
    *,
    trust_domain: str,
    address: str,
    db_url: str | None,
    kek: KeyEncryptionKey | None,
    advertise: str | None,
) -> IdentityFile:
    secrets_at = "database" if kek is not None else "files"
    config = ControllerConfig(
        trust_domain, address, db_url or home.default_db_url(), secrets_at, advertise
    )

    ca = CertificateAuthority.create(trust_domain, now)
    ca_key_pem, ca_cert_pem = ca.to_pem()
    passphrase = key_passphrase()
    write_private_key(home.ca_key, ca_key_pem, passphrase)
    _write_public(home.ca_pem, ca_cert_pem)
    signer = Signer.generate()
    write_private_key(home.signer_key, signer.to_pem(), passphrase)
    jwt_authority = _load_jwt_authority(home)
    _write_private(home.server_key, key_to_pem(generate_tls_key()))
    authority = Authority(
        ca=ca, signer=signer, controller_url=config.url, jwt_authority=jwt_authority
    )
    write_server_certificate(home, authority, config, now)

    db = Database.open(config.db_url)
    try:
        if kek is not None:
            sealed = {
                "ca.key": ca_key_pem,
                "ca.pem": ca_cert_pem,
                "signer.key": signer.to_pem(),
                "jwt.key": jwt_authority.to_pem(),
            }
            SecretStore(db, kek).store(sealed, now)
        admin = _create_admin(db, authority, now)
    finally:
        db.dispose()
    if kek is not None:
        # The database is now the one place these live; no plain copy stays behind.
        for path in (home.ca_key, home.signer_key, home.jwt_key):
            path.unlink()
    admin.save(home.admin_file)
    # config.json last: its presence is what marks the home as initialised.
    _write_public(home.config_json, config.to_json().encode())
    return admin


def load_home(
    root: str | os.PathLike[str],
    *,
    migrate_schema: bool = True,
    db_url: str | None = None,
    kek: KeyEncryptionKey | None = None,
    advertise: str | None = None,
) -> LoadedController:
    """Load config, CA and signer, open (and migrate) the database (`db_url`, when given,
    instead of the one in config.json). A home whose secrets are in the database needs the
    key-encryption key: `kek`, else from the environment (`controller.secrets.load_kek`)."""
    home = ControllerHome(root)
    if not home.is_initialised():
        raise HomeError(
            "not_initialised",
            f"{home.root} is not a controller home; run `umbra controller init` first",
        )
    config = ControllerConfig.from_json(home.config_json.read_text())
    if db_url:
        config = dataclasses.replace(config, db_url=db_url)
    if advertise:
        config = dataclasses.replace(config, advertise=check_advertise(advertise))
    now = datetime.now(UTC)
    if config.secrets == "database":
        return _load_from_database(home, config, now, migrate_schema=migrate_schema, kek=kek)
    try:
        advance_ca(home.dir, now)
        passphrase = key_passphrase()
        ca = CertificateAuthority.from_pem(
            read_private_key(home.ca_key, passphrase), home.ca_pem.read_bytes()
        )
        signer = Signer.from_pem(read_private_key(home.signer_key, passphrase))
        jwt_authority = _load_jwt_authority(home)
        rotation = load_rotation(home.dir, now)
    except PkiError as exc:
        raise HomeError("home_invalid", f"cannot load the CA or signer: {exc.reason}") from exc
    except OSError as exc:
        raise HomeError("home_invalid", f"cannot read {exc.filename}: {exc.strerror}") from exc
    authority = Authority(
        ca=ca,
        signer=signer,
        controller_url=config.url,
        jwt_authority=jwt_authority,
        retired_signers=rotation.retired,
        bundle_version=rotation.bundle_version,
        extra_cas=rotation.extra_cas,
    )
    db = Database.open(config.db_url, migrate_schema=migrate_schema)
    return LoadedController(home, config, authority, db)


def _load_from_database(
    home: ControllerHome,
    config: ControllerConfig,
    now: datetime,
    *,
    migrate_schema: bool,
    kek: KeyEncryptionKey | None,
) -> LoadedController:
    """Open the database, unseal the network's secrets, then migrate: a wrong key stops the
    start before anything is written."""
    kek = kek if kek is not None else load_kek()
    if kek is None:
        raise HomeError(
            "kek_missing",
            "this controller's secrets are in the database: give the key-encryption key "
            f"with --kek-file or {KEK_FILE_ENV} / {KEK_ENV}",
        )
    db = Database.open(config.db_url, migrate_schema=False)
    try:
        store = SecretStore(db, kek)
        opened = store.load()  # checks the KEK against every row before anything is written
        if CertificateAuthority.from_pem(opened["ca.key"], opened["ca.pem"]).trust_domain != (
            config.trust_domain
        ):
            raise HomeError("home_invalid", "the database belongs to another trust domain")
        if migrate_schema:
            migrate(db.engine)
        with store.files(now) as files:
            if migrate_schema:  # `join` only reads
                advance_ca(files, now)
            rotation = load_rotation(files, now)
            secrets = {name: files.read(name) or b"" for name in NETWORK_SECRETS}
        ca = CertificateAuthority.from_pem(secrets["ca.key"], secrets["ca.pem"])
        signer = Signer.from_pem(secrets["signer.key"])
        jwt_authority = JwtAuthority.from_pem(secrets["jwt.key"])
    except PkiError as exc:
        db.dispose()
        raise HomeError("home_invalid", f"cannot load the network keys: {exc.reason}") from exc
    except BaseException:
        db.dispose()
        raise
    authority = Authority(
        ca=ca,
        signer=signer,
        controller_url=config.url,
        jwt_authority=jwt_authority,
        retired_signers=rotation.retired,
        bundle_version=rotation.bundle_version,
        extra_cas=rotation.extra_cas,
    )
    return LoadedController(home, config, authority, db)


def write_server_certificate(
    home: ControllerHome, authority: Authority, config: ControllerConfig, now: datetime
) -> None:
    """(Re)issue the controller's TLS certificate for its address: SPIFFE ID
    ``spiffe://<td>/controller``, DNS ``localhost``, the address's and the advertised host."""
    key = key_from_pem(home.server_key.read_bytes())
    hosts = [config.host]
    if config.advertise:
        hosts.append(urlsplit(config.advertise).hostname or "")
    dns_names = ["localhost"]
    ip_addresses: list[str] = []
    for host in dict.fromkeys(hosts):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if host and host != "localhost":
                dns_names.append(host)
        else:
            ip_addresses.append("127.0.0.1" if ip.is_unspecified else str(ip))
    if not ip_addresses:
        ip_addresses.append("127.0.0.1")
    cert = authority.ca.issue_svid_for_public_key(
        key.public_key(),
        SpiffeId.controller(authority.trust_domain),
        None,
        now,
        SERVER_CERT_LIFETIME,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
    )
    _replace_public(home.server_pem, cert.public_bytes(serialization.Encoding.PEM))


def check_advertise(url: str | None) -> str | None:
    """`url` as an advertised controller URL (``https://HOST[:PORT]``, no path), normalised;
    raises HomeError ``invalid_address``."""
    if not url:
        return None
    parts = urlsplit(str(url).strip())
    try:
        port = parts.port
    except ValueError:
        port = None
        parts = parts._replace(scheme="")
    if parts.scheme != "https" or not parts.hostname or parts.path not in {"", "/"}:
        raise HomeError(
            "invalid_address", f"advertised URL {url!r} must be https://HOST[:PORT] (no path)"
        )
    if parts.query or parts.fragment or parts.username:
        raise HomeError("invalid_address", f"advertised URL {url!r} must be https://HOST[:PORT]")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{host}" + (f":{port}" if port else "")


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) to its parts; raises HomeError ``invalid_address``."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HomeError("invalid_address", f"address {address!r} must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def _create_admin(db: Database, authority: Authority, now: datetime) -> IdentityFile:
    key = generate_tls_key()
    noise_private, noise_public = generate_noise_keypair()
    with db.session() as session:
        store = Store(session)
        identity = new_identity_row(
            store, authority, name=ADMIN_NAME, kind="admin", attributes=(), now=now
        )
        cert = issue_for_identity(
            authority, identity, make_csr(key), noise_public, now, keep_previous=False
        )
        store.audit(now, "controller", "controller.init", ADMIN_NAME, {})
        spiffe_id = identity.spiffe_id
    return IdentityFile(
        name=ADMIN_NAME,
        spiffe_id=spiffe_id,
        key_pem=key_to_pem(key),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        bundle=authority.bundle,
        controller_url=authority.controller_url,
        noise_private_key=noise_private,
    )


def _load_jwt_authority(home: ControllerHome) -> JwtAuthority:
    """The JWT-SVID key, created (exclusively, 0600) on first use."""
    passphrase = key_passphrase()
    try:
        return JwtAuthority.from_pem(read_private_key(home.jwt_key, passphrase))
    except FileNotFoundError:
        pass
    created = JwtAuthority.generate()
    try:
        write_private_key(home.jwt_key, created.to_pem(), passphrase)
    except FileExistsError:  # another process created it a moment ago: use theirs
        return JwtAuthority.from_pem(read_private_key(home.jwt_key, passphrase))
    return created


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_public(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _replace_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
