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

The rotation is done on the home directory; a running controller takes it up at restart.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from umbranet.pki import CertificateAuthority, PkiError, Signer
from umbranet.pki.bundle import certificate_fingerprint

__all__ = [
    "CA_RETENTION",
    "DEFAULT_OVERLAP",
    "Rotation",
    "advance_ca",
    "load_rotation",
    "rotate_ca",
    "rotate_ticket_key",
]

DEFAULT_OVERLAP = timedelta(hours=48)
CA_RETENTION = timedelta(days=31)
"""How long a replaced CA stays trusted: longer than any certificate it issued (admin: 30 d)."""


@dataclass(frozen=True, slots=True)
class Rotation:
    """What the authority needs: keys still in overlap, and the bundle version to serve."""

    retired: tuple[Signer, ...]
    bundle_version: int
    extra_cas: tuple[x509.Certificate, ...] = ()
    """Trusted besides the issuing CA: the announced next one, and replaced ones."""


def rotate_ticket_key(
    controller_dir: Path, now: datetime, overlap: timedelta = DEFAULT_OVERLAP
) -> str:
    """Make a new ticket-signing key current; returns its key id."""
    if overlap < timedelta(0):
        raise ValueError("the overlap cannot be negative")
    state = _read_state(controller_dir)
    current = controller_dir / "signer.key"
    old = Signer.from_pem(current.read_bytes())
    retired_name = f"signer-{old.key_id}.key"
    _write_private(controller_dir / retired_name, old.to_pem())
    state["retired"].append({"key": retired_name, "until": (now + overlap).isoformat()})
    state["bundle_version"] += 1
    new = Signer.generate()
    tmp = controller_dir / "signer.key.new"
    _write_private(tmp, new.to_pem())
    os.replace(tmp, current)
    _write_state(controller_dir, state)
    return new.key_id


def rotate_ca(
    controller_dir: Path,
    now: datetime,
    trust_domain: str,
    overlap: timedelta = DEFAULT_OVERLAP,
) -> str:
    """Announce a new CA now, to issue from ``now + overlap``; returns its fingerprint."""
    if overlap < timedelta(0):
        raise ValueError("the overlap cannot be negative")
    state = _read_state(controller_dir)
    if state["ca"]["pending"] is not None:
        raise ValueError("a CA rotation is already under way")
    ca = CertificateAuthority.create(trust_domain, now)
    fingerprint = certificate_fingerprint(ca.certificate)
    key_pem, cert_pem = ca.to_pem()
    key_name, cert_name = f"ca-{fingerprint[:16]}.key", f"ca-{fingerprint[:16]}.pem"
    _write_private(controller_dir / key_name, key_pem)
    (controller_dir / cert_name).write_bytes(cert_pem)
    state["ca"]["pending"] = {
        "key": key_name,
        "cert": cert_name,
        "active_at": (now + overlap).isoformat(),
    }
    state["bundle_version"] += 1
    _write_state(controller_dir, state)
    return fingerprint


def advance_ca(controller_dir: Path, now: datetime) -> bool:
    """Make the announced CA the issuer once its overlap ended; True if it did now."""
    state = _read_state(controller_dir)
    pending = state["ca"]["pending"]
    if pending is None or now < datetime.fromisoformat(pending["active_at"]):
        return False
    old_cert = x509.load_pem_x509_certificate((controller_dir / "ca.pem").read_bytes())
    retired_name = f"ca-{certificate_fingerprint(old_cert)[:16]}-retired.pem"
    (controller_dir / retired_name).write_bytes(old_cert.public_bytes(serialization.Encoding.PEM))
    # Replacing ca.key destroys the old CA's key: it must never issue again.
    os.replace(controller_dir / pending["key"], controller_dir / "ca.key")
    os.replace(controller_dir / pending["cert"], controller_dir / "ca.pem")
    until = datetime.fromisoformat(pending["active_at"]) + CA_RETENTION
    state["ca"]["retired"].append({"cert": retired_name, "until": until.isoformat()})
    state["ca"]["pending"] = None
    state["bundle_version"] += 1
    _write_state(controller_dir, state)
    return True


def load_rotation(controller_dir: Path, now: datetime) -> Rotation:
    """The retired keys and CAs still trusted at `now` and the bundle version to serve."""
    state = _read_state(controller_dir)
    retired: list[Signer] = []
    ended = 0
    for entry in state["retired"]:
        if datetime.fromisoformat(entry["until"]) <= now:
            ended += 1
            continue
        retired.append(Signer.from_pem((controller_dir / entry["key"]).read_bytes()))
    extra: list[x509.Certificate] = []
    pending = state["ca"]["pending"]
    if pending is not None:
        extra.append(_load_cert(controller_dir / pending["cert"]))
    for entry in state["ca"]["retired"]:
        if datetime.fromisoformat(entry["until"]) <= now:
            ended += 1
            continue
        extra.append(_load_cert(controller_dir / entry["cert"]))
    return Rotation(tuple(retired), state["bundle_version"] + ended, tuple(extra))


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise PkiError("ca_invalid", f"{path.name} is not a certificate") from exc


def _read_state(controller_dir: Path) -> dict[str, Any]:
    path = controller_dir / "rotation.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"bundle_version": 0, "retired": [], "ca": {"pending": None, "retired": []}}
    except ValueError as exc:
        raise PkiError("key_invalid", f"{path.name} is not valid JSON") from exc
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
        raise PkiError("key_invalid", f"{path.name} is malformed")
    ca = data.setdefault("ca", {"pending": None, "retired": []})
    if (
        not isinstance(ca, dict)
        or not isinstance(ca.get("retired"), list)
        or not (ca.get("pending") is None or isinstance(ca.get("pending"), dict))
    ):
        raise PkiError("key_invalid", f"{path.name} is malformed")
    return data


def _write_state(controller_dir: Path, state: dict[str, Any]) -> None:
    tmp = controller_dir / "rotation.json.new"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, controller_dir / "rotation.json")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
