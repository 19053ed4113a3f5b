"""Ticket-key rotation in the controller's home directory, with an overlap period.

`rotate_ticket_key` makes a new signing key current and keeps the old one as *retired*
until ``now + overlap``: during the overlap the bundle trusts both (tickets signed by either
verify everywhere, so live streams and outstanding tickets keep working) and bundle updates
are signed by both (`Authority.bundle_updates`), so every holder can check the new bundle
against the one it has. Holders pick the update up at their next renewal (renewal happens at
half a certificate's life, so an overlap of at least one certificate lifetime reaches every
live identity) or when a router sees a newer ``bundle_version`` on the event stream.

State: ``controller/rotation.json`` ``{"bundle_version": n, "retired": [{"key": file,
"until": ISO time}]}``; retired keys are ``controller/signer-<kid>.key`` (0600). The bundle
version the controller serves is ``bundle_version`` plus the number of retired keys whose
overlap has ended, so it grows when a key is dropped as well as when one is added.

CA rotation (`rotate_ca`) has two phases, because a certificate is only useful once every
peer trusts its issuer: during the overlap the new CA is *announced* (in the bundle, after
the current one) while the old CA keeps issuing; when the overlap ends (`advance_ca`, run at
load), the new CA becomes the issuer and the first CA of the bundle (enrollment tokens pin
it), and the old CA's certificate stays in the bundle for `CA_RETENTION`, until everything it
issued has expired; its key is destroyed. State: ``"ca": {"pending": {"key", "cert",
"active_at"} | null, "retired": [{"cert", "until"}]}`` in ``rotation.json``. Enrollment
tokens minted before the switch pin the old CA and must be re-issued after it.

The rotation is done where the keys are: the home directory (`DirectoryFiles`), or, for
replicas whose keys are in the database, the sealed secrets table (`secrets.SealedFiles`,
one transaction holding the CA key row's lock, so a rotation and a replica starting at the
same time do not interleave). Every function here takes either, through `KeyFiles`; a path
means its directory. A running controller (every replica) takes it up at restart.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from umbranet.pki import CertificateAuthority, PkiError, Signer
from umbranet.pki.bundle import certificate_fingerprint

__all__ = [
    "CA_RETENTION",
    "DEFAULT_OVERLAP",
    "DirectoryFiles",
    "KeyFiles",
    "Rotation",
    "advance_ca",
    "load_rotation",
    "rotate_ca",
    "rotate_ticket_key",
]

DEFAULT_OVERLAP = timedelta(hours=48)
CA_RETENTION = timedelta(days=31)
"""How long a replaced CA stays trusted: longer than any certificate it issued (admin: 30 d)."""


class KeyFiles(Protocol):
    """Named key material: ``signer.key``, ``ca.key``, ``rotation.json``, retired keys."""

    def read(self, name: str) -> bytes | None:
        """The content, or None when there is no such file."""
        ...

    def write(self, name: str, data: bytes, *, private: bool) -> None:
        """Create or replace, atomically (`private`: readable by the owner only)."""
        ...

    def move(self, source: str, target: str) -> None:
        """Rename `source` over `target` (the old `target` is gone: a replaced key)."""
        ...


class DirectoryFiles:
    """`KeyFiles` in a home's ``controller/`` directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def read(self, name: str) -> bytes | None:
        try:
            return (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes, *, private: bool) -> None:
        tmp = self.directory / f"{name}.new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, self.directory / name)

    def move(self, source: str, target: str) -> None:
        os.replace(self.directory / source, self.directory / target)


def _files(where: Path | KeyFiles) -> KeyFiles:
    return DirectoryFiles(where) if isinstance(where, Path) else where


def _need(files: KeyFiles, name: str) -> bytes:
    data = files.read(name)
    if data is None:
        raise PkiError("key_invalid", f"{name} is missing")
    return data


@dataclass(frozen=True, slots=True)
class Rotation:
    """What the authority needs: keys still in overlap, and the bundle version to serve."""

    retired: tuple[Signer, ...]
    bundle_version: int
    extra_cas: tuple[x509.Certificate, ...] = ()
    """Trusted besides the issuing CA: the announced next one, and replaced ones."""


def rotate_ticket_key(
    where: Path | KeyFiles, now: datetime, overlap: timedelta = DEFAULT_OVERLAP
) -> str:
    """Make a new ticket-signing key current; returns its key id."""
    if overlap < timedelta(0):
        raise ValueError("the overlap cannot be negative")
    files = _files(where)
    state = _read_state(files)
    old = Signer.from_pem(_need(files, "signer.key"))
    retired_name = f"signer-{old.key_id}.key"
    files.write(retired_name, old.to_pem(), private=True)
    state["retired"].append({"key": retired_name, "until": (now + overlap).isoformat()})
    state["bundle_version"] += 1
    new = Signer.generate()
    files.write("signer.key", new.to_pem(), private=True)
    _write_state(files, state)
    return new.key_id


def rotate_ca(
    where: Path | KeyFiles,
    now: datetime,
    trust_domain: str,
    overlap: timedelta = DEFAULT_OVERLAP,
) -> str:
    """Announce a new CA now, to issue from ``now + overlap``; returns its fingerprint."""
    if overlap < timedelta(0):
        raise ValueError("the overlap cannot be negative")
    files = _files(where)
    state = _read_state(files)
    if state["ca"]["pending"] is not None:
        raise ValueError("a CA rotation is already under way")
    ca = CertificateAuthority.create(trust_domain, now)
    fingerprint = certificate_fingerprint(ca.certificate)
    key_pem, cert_pem = ca.to_pem()
    key_name, cert_name = f"ca-{fingerprint[:16]}.key", f"ca-{fingerprint[:16]}.pem"
    files.write(key_name, key_pem, private=True)
    files.write(cert_name, cert_pem, private=False)
    state["ca"]["pending"] = {
        "key": key_name,
        "cert": cert_name,
        "active_at": (now + overlap).isoformat(),
    }
    state["bundle_version"] += 1
    _write_state(files, state)
    return fingerprint


def advance_ca(where: Path | KeyFiles, now: datetime) -> bool:
    """Make the announced CA the issuer once its overlap ended; True if it did now."""
    files = _files(where)
    state = _read_state(files)
    pending = state["ca"]["pending"]
    if pending is None or now < datetime.fromisoformat(pending["active_at"]):
        return False
    old_cert = x509.load_pem_x509_certificate(_need(files, "ca.pem"))
    retired_name = f"ca-{certificate_fingerprint(old_cert)[:16]}-retired.pem"
    files.write(retired_name, old_cert.public_bytes(serialization.Encoding.PEM), private=False)
    # Replacing ca.key destroys the old CA's key: it must never issue again.
    files.move(pending["key"], "ca.key")
    files.move(pending["cert"], "ca.pem")
    until = datetime.fromisoformat(pending["active_at"]) + CA_RETENTION
    state["ca"]["retired"].append({"cert": retired_name, "until": until.isoformat()})
    state["ca"]["pending"] = None
    state["bundle_version"] += 1
    _write_state(files, state)
    return True


def load_rotation(where: Path | KeyFiles, now: datetime) -> Rotation:
    """The retired keys and CAs still trusted at `now` and the bundle version to serve."""
    files = _files(where)
    state = _read_state(files)
    retired: list[Signer] = []
    ended = 0
    for entry in state["retired"]:
        if datetime.fromisoformat(entry["until"]) <= now:
            ended += 1
            continue
        retired.append(Signer.from_pem(_need(files, entry["key"])))
    extra: list[x509.Certificate] = []
    pending = state["ca"]["pending"]
    if pending is not None:
        extra.append(_load_cert(files, pending["cert"]))
    for entry in state["ca"]["retired"]:
        if datetime.fromisoformat(entry["until"]) <= now:
            ended += 1
            continue
        extra.append(_load_cert(files, entry["cert"]))
    return Rotation(tuple(retired), state["bundle_version"] + ended, tuple(extra))


def _load_cert(files: KeyFiles, name: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_need(files, name))
    except ValueError as exc:
        raise PkiError("ca_invalid", f"{name} is not a certificate") from exc


def _read_state(files: KeyFiles) -> dict[str, Any]:
    name = "rotation.json"
    text = files.read(name)
    if text is None:
        return {"bundle_version": 0, "retired": [], "ca": {"pending": None, "retired": []}}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PkiError("key_invalid", f"{name} is not valid JSON") from exc
    if (
        not isinstance(data, dict)
        or type(data.get("bundle_version")) is not int
        or not isinstance(data.get("retired"), list)
        or not all(
            isinstance(e, dict)
            and isinstance(e.get("key"), str)
            and isinstance(e.get("until"), str)
            and "/" not in e["key"]
            for e in data["retired"]
        )
    ):
        raise PkiError("key_invalid", f"{name} is malformed")
    ca = data.setdefault("ca", {"pending": None, "retired": []})
    if (
        not isinstance(ca, dict)
        or not isinstance(ca.get("retired"), list)
        or not (ca.get("pending") is None or isinstance(ca.get("pending"), dict))
    ):
        raise PkiError("key_invalid", f"{name} is malformed")
    return data


def _write_state(files: KeyFiles, state: dict[str, Any]) -> None:
    text = json.dumps(state, indent=2, sort_keys=True) + "\n"
    files.write("rotation.json", text.encode(), private=False)
