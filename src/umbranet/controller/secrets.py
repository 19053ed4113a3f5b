"""The network's secrets in the shared database, sealed under a key-encryption key (KEK).

Replicas on one database must sign with the same CA, ticket key and JWT key. Copying key
files between machines is error-prone and leaves no single source; keeping them in the
database in the clear would hand them to anyone with a database backup or read access. So
each secret is sealed with AES-256-GCM under a 32-byte KEK that every replica gets from a
file (``--kek-file``) or the environment (``UMBRA_KEK``, base64) and that never enters the
database. The secret's name is the associated data, so a sealed row moved under another
name does not open.

Every row records the KEK's id (the first 16 hex digits of its SHA-256, which says nothing
usable about the key). A replica given a different KEK finds no row with its id and stops
before it writes anything (`SecretStore.load` raises `HomeError` ``kek_mismatch``), rather
than failing later on one secret or, worse, sealing new secrets nobody else can open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.orm import Session

from umbranet.controller.store import Database
from umbranet.controller.store.cluster_models import ControllerSecret
from umbranet.home_layout import HomeError

__all__ = [
    "KEK_ENV",
    "KEK_FILE_ENV",
    "NETWORK_SECRETS",
    "KeyEncryptionKey",
    "SealedFiles",
    "SecretStore",
    "load_kek",
]

KEK_ENV = "UMBRA_KEK"
KEK_FILE_ENV = "UMBRA_KEK_FILE"
NETWORK_SECRETS = ("ca.key", "ca.pem", "signer.key", "jwt.key")
"""What every replica needs to sign as the network (the CA certificate travels with its key)."""
_NONCE = 12


class KeyEncryptionKey:
    """A 32-byte AES-256-GCM key; `id` names it without revealing it."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise HomeError("kek_invalid", "the key-encryption key must be 32 bytes")
        self._aead = AESGCM(key)
        self.id = hashlib.sha256(b"umbra kek id\0" + key).hexdigest()[:16]

    @classmethod
    def generate(cls) -> tuple[KeyEncryptionKey, str]:
        """A new KEK and its text form (base64) for a file or ``UMBRA_KEK``."""
        raw = secrets.token_bytes(32)
        return cls(raw), base64.b64encode(raw).decode()

    @classmethod
    def from_text(cls, text: str) -> KeyEncryptionKey:
        """Base64 (44 characters) or hex (64), surrounding whitespace ignored."""
        text = text.strip()
        try:
            raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise HomeError("kek_invalid", "the key-encryption key is not base64 or hex") from exc
        return cls(raw)

    def seal(self, name: str, data: bytes) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, data, name.encode())
        return base64.b64encode(nonce + sealed).decode()

    def open(self, name: str, text: str) -> bytes:
        raw = base64.b64decode(text)
        try:
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], name.encode())
        except InvalidTag as exc:
            raise HomeError(
                "kek_mismatch", f"secret {name!r} does not open with this key-encryption key"
            ) from exc


def load_kek(path: str | os.PathLike[str] | None = None) -> KeyEncryptionKey | None:
    """The KEK from `path`, else ``UMBRA_KEK_FILE``, else ``UMBRA_KEK``; None if none set."""
    if path is None:
        path = os.environ.get(KEK_FILE_ENV) or None
    if path is not None:
        try:
            return KeyEncryptionKey.from_text(Path(path).read_text())
        except OSError as exc:
            message = f"cannot read the KEK file {path}: {exc.strerror}"
            raise HomeError("kek_invalid", message) from exc
    text = os.environ.get(KEK_ENV)
    return KeyEncryptionKey.from_text(text) if text else None


class SecretStore:
    """The sealed secrets of one database."""

    def __init__(self, db: Database, kek: KeyEncryptionKey) -> None:
        self._db = db
        self._kek = kek

    def store(self, values: Mapping[str, bytes], now: datetime) -> None:
        """Seal and insert `values` (once, at init: an existing secret is never replaced)."""
        with self._db.session() as session:
            for name, data in values.items():
                sealed = self._kek.seal(name, data)
                session.add(
                    ControllerSecret(name=name, kek_id=self._kek.id, sealed=sealed, created_at=now)
                )

    def load(self) -> dict[str, bytes]:
        """Every network secret, opened; `HomeError` if any is missing or the KEK is wrong.

        Reads only: a replica with the wrong KEK leaves the database as it found it.
        """
        try:
            with self._db.session() as session:
                rows = {r.name: r for r in session.scalars(sa.select(ControllerSecret))}
        except sa.exc.SQLAlchemyError as exc:
            raise HomeError(
                "secrets_missing", f"cannot read the network secrets from the database: {exc}"
            ) from exc
        missing = [n for n in NETWORK_SECRETS if n not in rows]
        if missing:
            raise HomeError(
                "secrets_missing",
                f"the database holds no {', '.join(missing)}; initialise the first replica "
                "with `umbra controller init --db URL --kek-file FILE`",
            )
        wrong = sorted(n for n, r in rows.items() if r.kek_id != self._kek.id)
        if wrong:
            raise HomeError(
                "kek_mismatch",
                f"the key-encryption key (id {self._kek.id}) is not the one the database's "
                f"secrets are sealed with (id {rows[wrong[0]].kek_id}); refusing to start",
            )
        return {name: self._kek.open(name, row.sealed) for name, row in rows.items()}

    @contextmanager
    def files(self, now: datetime) -> Iterator[SealedFiles]:
        """The secrets as `rotation.KeyFiles`, in one transaction that holds the lock on the
        CA key's row: rotations, and replicas advancing a CA at start, take turns. The KEK
        is checked first (`load`): a wrong key seals nothing."""
        self.load()
        with self._db.session() as session:
            session.execute(
                sa.select(ControllerSecret.name)
                .where(ControllerSecret.name == "ca.key")
                .with_for_update()
            )
            yield SealedFiles(session, self._kek, now)


class SealedFiles:
    """`rotation.KeyFiles` over the sealed secrets table, in the caller's transaction."""

    def __init__(self, session: Session, kek: KeyEncryptionKey, now: datetime) -> None:
        self._session = session
        self._kek = kek
        self._now = now

    def read(self, name: str) -> bytes | None:
        row = self._session.get(ControllerSecret, name)
        return None if row is None else self._kek.open(name, row.sealed)

    def write(self, name: str, data: bytes, *, private: bool) -> None:
        # Public files (certificates, rotation.json) are sealed too: one way for everything.
        sealed = self._kek.seal(name, data)
        row = self._session.get(ControllerSecret, name)
        if row is None:
            self._session.add(
                ControllerSecret(
                    name=name, kek_id=self._kek.id, sealed=sealed, created_at=self._now
                )
            )
        else:
            row.sealed, row.kek_id = sealed, self._kek.id
        self._session.flush()

    def move(self, source: str, target: str) -> None:
        data = self.read(source)
        if data is None:
            raise HomeError("secrets_missing", f"the database holds no {source}")
        # Sealed under the target's name: the name is the associated data.
        self.write(target, data, private=True)
        self._session.execute(sa.delete(ControllerSecret).where(ControllerSecret.name == source))
