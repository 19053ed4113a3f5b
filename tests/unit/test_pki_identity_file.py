"""Trust bundles (JSON form, validation, rotation) and identity files (0600, atomic, checked)."""

import base64
import hashlib
import json
import os
import stat
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from umbranet.pki import (
    CertificateAuthority,
    IdentityFile,
    PkiError,
    Signer,
    SpiffeId,
    TrustBundle,
    generate_noise_keypair,
    generate_tls_key,
    key_to_pem,
    make_csr,
    verify_svid,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TD = "demo.umbra"
CA = CertificateAuthority.create(TD, NOW)
OTHER_CA = CertificateAuthority.create(TD, NOW)
SIGNER = Signer.generate()
BUNDLE = TrustBundle.from_certificates(TD, [CA.certificate], [SIGNER.public_key])
ALICE = SpiffeId.for_identity(TD, "device", "alice")


def pem(cert: object) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined, no-any-return]


def make_identity(ca: CertificateAuthority = CA) -> IdentityFile:
    key = generate_tls_key()
    noise_private, noise_public = generate_noise_keypair()
    cert = ca.issue_svid(make_csr(key), ALICE, noise_public, NOW)
    return IdentityFile(
        name="alice",
        spiffe_id=str(ALICE),
        key_pem=key_to_pem(key),
        cert_pem=pem(cert),
        bundle=BUNDLE,
        controller_url="https://127.0.0.1:8443",
        noise_private_key=noise_private,
    )


# --- trust bundle -------------------------------------------------------------------------


def test_bundle_json_round_trip_and_shape() -> None:
    data = json.loads(BUNDLE.to_json())
    assert set(data) == {"trust_domain", "ca_pem", "ticket_keys"}
    assert data["trust_domain"] == TD
    assert data["ticket_keys"] == {
        SIGNER.key_id: base64.b64encode(SIGNER.public_key.public_bytes_raw()).decode()
    }
    assert TrustBundle.from_json(BUNDLE.to_json()) == BUNDLE
    assert TrustBundle.from_json(BUNDLE.to_json().encode()) == BUNDLE
    assert BUNDLE.ca_certificates == (CA.certificate,)


def test_bundle_fingerprint_is_sha256_of_first_ca_der() -> None:
    der = CA.certificate.public_bytes(serialization.Encoding.DER)
    assert BUNDLE.ca_fingerprint() == hashlib.sha256(der).hexdigest()
    both = TrustBundle.from_certificates(TD, [OTHER_CA.certificate, CA.certificate])
    assert both.ca_fingerprint() != BUNDLE.ca_fingerprint()
    assert len(both.ca_certificates) == 2


def test_bundle_key_rotation() -> None:
    other = Signer.generate()
    rotated = BUNDLE.with_ticket_key(other.public_key)
    assert set(rotated.ticket_keys) == {SIGNER.key_id, other.key_id}
    assert set(BUNDLE.ticket_keys) == {SIGNER.key_id}  # original untouched
    assert set(rotated.without_ticket_key(SIGNER.key_id).ticket_keys) == {other.key_id}


def _bundle_json(**changes: object) -> str:
    data = json.loads(BUNDLE.to_json())
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not None})


LEAF_PEM = pem(CA.issue_svid(make_csr(generate_tls_key()), ALICE, None, NOW)).decode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{",
        _bundle_json(extra=1),
        _bundle_json(ticket_keys=None),
        _bundle_json(trust_domain="Bad TD"),
        _bundle_json(trust_domain=7),
        _bundle_json(ca_pem=""),
        _bundle_json(ca_pem="not pem"),
        _bundle_json(ca_pem=LEAF_PEM),  # a leaf is not a CA
        _bundle_json(ticket_keys=[]),
        _bundle_json(ticket_keys={SIGNER.key_id: "!!"}),
        _bundle_json(ticket_keys={SIGNER.key_id: base64.b64encode(b"x" * 31).decode()}),
        _bundle_json(ticket_keys={"0" * 16: base64.b64encode(b"x" * 32).decode()}),
    ],
)
def test_bundle_from_json_rejects(text: str) -> None:
    with pytest.raises(PkiError) as caught:
        TrustBundle.from_json(text)
    assert caught.value.code == "bundle_invalid"


# --- identity file ------------------------------------------------------------------------


def test_identity_file_round_trip_mode_0600(tmp_path: Path) -> None:
    identity = make_identity()
    path = tmp_path / "alice.json"
    identity.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["alice.json"]  # no temp file left behind
    loaded = IdentityFile.load(path)
    assert loaded == identity
    assert verify_svid([loaded.certificate], loaded.bundle, NOW).noise_public_key == (
        loaded.noise_public_key
    )
    assert loaded.tls_key.public_key() == loaded.certificate.public_key()
    assert loaded.trust_domain == TD


def test_identity_file_repr_hides_secrets() -> None:
    identity = make_identity()
    text = repr(identity)
    assert "PRIVATE KEY" not in text
    assert repr(identity.noise_private_key) not in text
    assert "alice" in text


def test_identity_file_save_replaces_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "alice.json"
    first, second = make_identity(), make_identity()
    first.save(path)
    second.save(path)
    assert IdentityFile.load(path) == second
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o004])
def test_identity_file_load_refuses_insecure_mode(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "alice.json"
    make_identity().save(path)
    os.chmod(path, mode)
    with pytest.raises(PkiError) as caught:
        IdentityFile.load(path)
    assert caught.value.code == "identity_file_insecure"


def test_identity_file_with_certificate_after_renewal() -> None:
    identity = make_identity()
    renewed_cert = CA.issue_svid(make_csr(identity.tls_key), ALICE, identity.noise_public_key, NOW)
    renewed = identity.with_certificate(pem(renewed_cert))
    assert renewed.certificate.serial_number == renewed_cert.serial_number
    assert renewed.key_pem == identity.key_pem
    assert identity.certificate.serial_number != renewed_cert.serial_number
    # A certificate for another key is refused.
    foreign = CA.issue_svid(make_csr(generate_tls_key()), ALICE, None, NOW)
    with pytest.raises(PkiError) as caught:
        identity.with_certificate(pem(foreign))
    assert caught.value.code == "identity_file_invalid"


def test_identity_file_chain_in_cert_pem() -> None:
    identity = make_identity()
    with_chain = identity.with_certificate(identity.cert_pem + pem(CA.certificate))
    assert len(with_chain.certificate_chain) == 2
    assert with_chain.certificate == identity.certificate


def _inconsistent_variants() -> list[dict[str, object]]:
    bob = SpiffeId.for_identity(TD, "device", "bob")
    key = generate_tls_key()
    bob_cert = CA.issue_svid(make_csr(key), bob, None, NOW)
    other_noise = generate_noise_keypair()[1]
    wrong_noise_cert = CA.issue_svid(make_csr(key), ALICE, other_noise, NOW)
    foreign_cert = OTHER_CA.issue_svid(make_csr(key), ALICE, None, NOW)
    return [
        {"name": "bob"},
        {"name": ""},
        {"spiffe_id": "spiffe://demo.umbra/device/bob"},
        {"spiffe_id": "not an id"},
        {"spiffe_id": "spiffe://other.umbra/device/alice"},
        {"key_pem": key_to_pem(generate_tls_key())},
        {"key_pem": b"junk"},
        {"cert_pem": b"junk"},
        {"key_pem": key_to_pem(key), "cert_pem": pem(bob_cert)},
        {"key_pem": key_to_pem(key), "cert_pem": pem(wrong_noise_cert)},
        {"key_pem": key_to_pem(key), "cert_pem": pem(foreign_cert)},
        {"noise_private_key": b"short"},
        {"controller_url": ""},
        {"bundle": "not a bundle"},
    ]


@pytest.mark.parametrize("changes", _inconsistent_variants())
def test_identity_file_rejects_inconsistent_parts(changes: dict[str, object]) -> None:
    with pytest.raises(PkiError) as caught:
        replace(make_identity(), **changes)  # type: ignore[arg-type]
    assert caught.value.code == "identity_file_invalid"


def _identity_json(**changes: object) -> str:
    data = json.loads(make_identity().to_json())
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not None})


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        _identity_json(version=2),
        _identity_json(version=True),
        _identity_json(version=None),
        _identity_json(extra="x"),
        _identity_json(name=5),
        _identity_json(noise_private_key="!!!"),
        _identity_json(noise_private_key=5),
        _identity_json(bundle={"trust_domain": TD}),
        _identity_json(key_pem="ключ"),
    ],
)
def test_identity_file_from_json_rejects(text: str) -> None:
    with pytest.raises(PkiError) as caught:
        IdentityFile.from_json(text)
    assert caught.value.code == "identity_file_invalid"


def test_identity_file_load_validates_content(tmp_path: Path) -> None:
    path = tmp_path / "alice.json"
    path.write_text(_identity_json(name="mallory"))
    os.chmod(path, 0o600)
    with pytest.raises(PkiError) as caught:
        IdentityFile.load(path)
    assert caught.value.code == "identity_file_invalid"


def test_identity_file_for_the_controller_id() -> None:
    key = generate_tls_key()
    noise_private, _ = generate_noise_keypair()
    cert = CA.issue_svid_for_public_key(key.public_key(), SpiffeId.controller(TD), None, NOW)
    identity = IdentityFile(
        name="controller",
        spiffe_id=f"spiffe://{TD}/controller",
        key_pem=key_to_pem(key),
        cert_pem=pem(cert),
        bundle=BUNDLE,
        controller_url="https://127.0.0.1:8443",
        noise_private_key=noise_private,
    )
    assert IdentityFile.from_json(identity.to_json()) == identity
