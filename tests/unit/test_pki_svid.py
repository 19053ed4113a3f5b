"""The CA and X.509-SVIDs: issuance follows the SPIFFE rules, verify_svid rejects the rest."""

import contextlib
import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.pki import (
    NOISE_KEY_OID,
    CertificateAuthority,
    PkiError,
    PkiUsageError,
    SpiffeId,
    TrustBundle,
    generate_noise_keypair,
    generate_tls_key,
    load_chain,
    load_csr,
    make_csr,
    noise_public_key_of,
    spiffe_id_of,
    verify_svid,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TD = "demo.umbra"
ALICE = SpiffeId.for_identity(TD, "device", "alice")


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(TD, NOW)


@pytest.fixture(scope="module")
def bundle(ca: CertificateAuthority) -> TrustBundle:
    return TrustBundle.from_certificates(TD, [ca.certificate])


def ca_key(ca: CertificateAuthority) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(ca.to_pem()[0], password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def issue(ca: CertificateAuthority, **kwargs: object) -> x509.Certificate:
    params: dict[str, object] = {"noise_public_key": generate_noise_keypair()[1], "now": NOW}
    params.update(kwargs)
    return ca.issue_svid(make_csr(generate_tls_key()), ALICE, **params)  # type: ignore[arg-type]


def test_ca_certificate_shape(ca: CertificateAuthority) -> None:
    cert = ca.certificate
    ext = cert.extensions
    constraints = ext.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    sans = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}"]
    ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert cert.issuer == cert.subject
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.not_valid_after_utc - NOW == timedelta(days=3650)
    assert ca.trust_domain == TD


def test_svid_conforms_to_spiffe_rules(ca: CertificateAuthority) -> None:
    _, noise_public = generate_noise_keypair()
    cert = ca.issue_svid(
        make_csr(generate_tls_key(), common_name="ignored"),
        ALICE,
        noise_public,
        NOW,
        dns_names=["router.example"],
        ip_addresses=["127.0.0.1"],
    )
    ext = cert.extensions
    sans = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [str(ALICE)]
    assert sans.get_values_for_type(x509.DNSName) == ["router.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    constraints = ext.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_cert_sign and not usage.value.crl_sign
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    noise = ext.get_extension_for_oid(NOISE_KEY_OID)
    assert not noise.critical
    assert isinstance(noise.value, x509.UnrecognizedExtension)
    assert noise.value.value == b"\x04\x20" + noise_public
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "umbranet"
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + timedelta(hours=24)
    assert 0 < cert.serial_number < 2**159
    assert noise_public_key_of(cert) == noise_public
    assert spiffe_id_of(cert) == ALICE


def test_svid_ignores_csr_extensions(ca: CertificateAuthority) -> None:
    key = generate_tls_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://demo.umbra/x")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert = ca.issue_svid(csr, ALICE, None, NOW)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert spiffe_id_of(cert) == ALICE
    assert noise_public_key_of(cert) is None


def test_svid_lifetime_is_capped_by_the_ca(ca: CertificateAuthority) -> None:
    late = ca.certificate.not_valid_after_utc - timedelta(hours=1)
    cert = issue(ca, now=late)
    assert cert.not_valid_after_utc == ca.certificate.not_valid_after_utc


def test_ed25519_csr_is_accepted(ca: CertificateAuthority, bundle: TrustBundle) -> None:
    cert = ca.issue_svid(make_csr(ed25519.Ed25519PrivateKey.generate()), ALICE, None, NOW)
    assert verify_svid([cert], bundle, NOW).spiffe_id == ALICE


def test_controller_server_cert_without_csr(ca: CertificateAuthority, bundle: TrustBundle) -> None:
    key = generate_tls_key()
    cert = ca.issue_svid_for_public_key(
        key.public_key(), SpiffeId.controller(TD), None, NOW, dns_names=["localhost"]
    )
    peer = verify_svid([cert], bundle, NOW)
    assert peer.spiffe_id.is_controller
    assert peer.noise_public_key is None


def corrupt_csr_signature() -> x509.CertificateSigningRequest:
    der = make_csr(generate_tls_key(), common_name="umbranet").public_bytes(
        serialization.Encoding.DER
    )
    tampered = der.replace(b"umbranet", b"umbranex")
    assert tampered != der
    return x509.load_der_x509_csr(tampered)


def rsa_csr() -> x509.CertificateSigningRequest:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa")]))
        .sign(key, hashes.SHA256())
    )


def p384_csr() -> x509.CertificateSigningRequest:
    key = ec.generate_private_key(ec.SECP384R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p384")]))
        .sign(key, hashes.SHA384())
    )


@pytest.mark.parametrize("make_bad_csr", [corrupt_csr_signature, rsa_csr, p384_csr])
def test_bad_csr_is_refused(
    ca: CertificateAuthority, make_bad_csr: Callable[[], x509.CertificateSigningRequest]
) -> None:
    with pytest.raises(PkiError) as caught:
        ca.issue_svid(make_bad_csr(), ALICE, None, NOW)
    assert caught.value.code == "csr_invalid"


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN CERTIFICATE REQUEST-----\nxx"])
def test_load_csr_garbage(data: bytes) -> None:
    with pytest.raises(PkiError) as caught:
        load_csr(data)
    assert caught.value.code == "csr_invalid"


def test_load_csr_pem_and_der() -> None:
    csr = make_csr(generate_tls_key())
    assert load_csr(csr.public_bytes(serialization.Encoding.PEM).decode()) == csr
    assert load_csr(csr.public_bytes(serialization.Encoding.DER)) == csr


@pytest.mark.parametrize("noise", [b"", b"\x00" * 31, b"\x00" * 33])
def test_bad_noise_key_is_refused(ca: CertificateAuthority, noise: bytes) -> None:
    with pytest.raises(PkiError) as caught:
        issue(ca, noise_public_key=noise)
    assert caught.value.code == "noise_key_invalid"


def test_issue_misuse(ca: CertificateAuthority) -> None:
    with pytest.raises(PkiUsageError):
        issue(ca, now=datetime(2030, 1, 1))  # naive
    with pytest.raises(PkiUsageError):
        issue(ca, lifetime=timedelta(0))
    with pytest.raises(PkiUsageError):
        ca.issue_svid(make_csr(generate_tls_key()), "spiffe://other.td/device/a", None, NOW)
    with pytest.raises(PkiUsageError):
        ca.issue_svid(make_csr(generate_tls_key()), f"spiffe://{TD}", None, NOW)


def test_verify_good_svid(ca: CertificateAuthority, bundle: TrustBundle) -> None:
    cert = issue(ca)
    peer = verify_svid([cert], bundle, NOW)
    assert peer.spiffe_id == ALICE
    assert peer.noise_public_key == noise_public_key_of(cert)
    assert peer.serial == cert.serial_number
    assert (peer.not_before, peer.not_after) == (
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
    )
    # Boundaries are inclusive (RFC 5280).
    verify_svid([cert], bundle, peer.not_before)
    verify_svid([cert], bundle, peer.not_after)


def test_verify_accepts_pem_and_der_chains(ca: CertificateAuthority, bundle: TrustBundle) -> None:
    cert = issue(ca)
    pem = cert.public_bytes(serialization.Encoding.PEM) + ca.certificate.public_bytes(
        serialization.Encoding.PEM
    )
    assert verify_svid(load_chain(pem), bundle, NOW).spiffe_id == ALICE
    der = cert.public_bytes(serialization.Encoding.DER)
    assert verify_svid(load_chain(der), bundle, NOW).spiffe_id == ALICE


@pytest.mark.parametrize("data", [b"", b"junk", b"-----BEGIN CERTIFICATE-----\n!!\n", "x" * 10])
def test_load_chain_garbage(data: bytes | str) -> None:
    with pytest.raises(PkiError) as caught:
        load_chain(data)
    assert caught.value.code == "not_svid"


def craft_leaf(
    ca: CertificateAuthority,
    uris: list[str],
    *,
    ca_flag: bool = False,
    key_usage_critical: bool = True,
    noise_value: bytes | None = None,
    extra_critical: bool = False,
) -> x509.Certificate:
    """A leaf signed directly with the CA key, bypassing issue_svid's rules."""
    key = generate_tls_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crafted")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=key_usage_critical,
        )
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    if noise_value is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(NOISE_KEY_OID, noise_value), critical=False
        )
    if extra_critical:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00"),
            critical=True,
        )
    return builder.sign(ca_key(ca), hashes.SHA256())


def test_crafted_leaf_baseline_verifies(ca: CertificateAuthority, bundle: TrustBundle) -> None:
    # The crafting helper itself produces an acceptable SVID, so each rejection below is
    # caused by exactly the defect it introduces.
    assert verify_svid([craft_leaf(ca, [str(ALICE)])], bundle, NOW).spiffe_id == ALICE


OTHER_CA = CertificateAuthority.create(TD, NOW)
OTHER_TD_CA = CertificateAuthority.create("other.umbra", NOW)

REJECTIONS: list[tuple[str, Callable[[CertificateAuthority], list[x509.Certificate]], datetime]] = [
    ("cert_expired", lambda ca: [issue(ca)], NOW + timedelta(hours=24, seconds=1)),
    ("cert_not_yet_valid", lambda ca: [issue(ca, now=NOW + timedelta(hours=1))], NOW),
    ("cert_untrusted", lambda ca: [issue(OTHER_CA)], NOW),
    ("cert_untrusted", lambda ca: [issue(OTHER_CA), ca.certificate], NOW),
    ("cert_untrusted", lambda ca: [], NOW),
    ("not_svid", lambda ca: [ca.certificate], NOW),
    ("not_svid", lambda ca: [craft_leaf(ca, [str(ALICE), "spiffe://demo.umbra/device/b"])], NOW),
    ("not_svid", lambda ca: [craft_leaf(ca, [])], NOW),
    ("not_svid", lambda ca: [craft_leaf(ca, ["https://demo.umbra/device/alice"])], NOW),
    ("not_svid", lambda ca: [craft_leaf(ca, [f"spiffe://{TD}"])], NOW),
    ("not_svid", lambda ca: [craft_leaf(ca, [str(ALICE)], ca_flag=True)], NOW),
    (
        "not_svid",
        lambda ca: [craft_leaf(ca, [str(ALICE)], noise_value=b"\x04\x1f" + bytes(31))],
        NOW,
    ),
    ("not_svid", lambda ca: [craft_leaf(ca, [str(ALICE)], noise_value=bytes(34))], NOW),
    ("not_svid", lambda ca: [craft_leaf(ca, [str(ALICE)], extra_critical=True)], NOW),
    ("wrong_trust_domain", lambda ca: [craft_leaf(ca, ["spiffe://other.umbra/device/a"])], NOW),
]


@pytest.mark.parametrize(("code", "make_chain", "at"), REJECTIONS)
def test_verify_svid_rejects(
    ca: CertificateAuthority,
    bundle: TrustBundle,
    code: str,
    make_chain: Callable[[CertificateAuthority], list[x509.Certificate]],
    at: datetime,
) -> None:
    with pytest.raises(PkiError) as caught:
        verify_svid(make_chain(ca), bundle, at)
    assert caught.value.code == code


def test_wrong_trust_domain_from_other_network() -> None:
    other_bundle = TrustBundle.from_certificates("other.umbra", [OTHER_TD_CA.certificate])
    cert = OTHER_TD_CA.issue_svid(
        make_csr(generate_tls_key()), SpiffeId.for_identity("other.umbra", "device", "x"), None, NOW
    )
    assert verify_svid([cert], other_bundle, NOW).spiffe_id.trust_domain == "other.umbra"
    # Same CA trusted under a different name: the SVID is for another trust domain.
    confused = TrustBundle.from_certificates(TD, [OTHER_TD_CA.certificate])
    with pytest.raises(PkiError) as caught:
        verify_svid([cert], confused, NOW)
    assert caught.value.code == "wrong_trust_domain"


def test_expired_ca_is_rejected() -> None:
    short_ca = CertificateAuthority.create(TD, NOW, lifetime=timedelta(hours=1))
    bundle = TrustBundle.from_certificates(TD, [short_ca.certificate])
    cert = short_ca.issue_svid(make_csr(generate_tls_key()), ALICE, None, NOW)
    assert cert.not_valid_after_utc == short_ca.certificate.not_valid_after_utc
    with pytest.raises(PkiError) as caught:
        verify_svid([cert], bundle, NOW + timedelta(hours=2))
    assert caught.value.code == "cert_expired"
    with pytest.raises(PkiError) as caught:
        short_ca.issue_svid(make_csr(generate_tls_key()), ALICE, None, NOW + timedelta(hours=2))
    assert caught.value.code == "cert_expired"


def test_rotated_bundle_trusts_both_cas(ca: CertificateAuthority) -> None:
    both = TrustBundle.from_certificates(TD, [OTHER_CA.certificate, ca.certificate])
    assert verify_svid([issue(ca)], both, NOW).spiffe_id == ALICE
    assert verify_svid([issue(OTHER_CA)], both, NOW).spiffe_id == ALICE


def test_verify_rejects_naive_now(ca: CertificateAuthority, bundle: TrustBundle) -> None:
    with pytest.raises(PkiUsageError):
        verify_svid([issue(ca)], bundle, datetime(2030, 1, 1))


def test_ca_pem_round_trip(ca: CertificateAuthority) -> None:
    key_pem, cert_pem = ca.to_pem()
    assert b"BEGIN PRIVATE KEY" in key_pem
    loaded = CertificateAuthority.from_pem(key_pem, cert_pem)
    assert loaded.certificate == ca.certificate
    assert loaded.trust_domain == TD
    bundle = TrustBundle.from_certificates(TD, [ca.certificate])
    assert verify_svid([issue(loaded)], bundle, NOW).spiffe_id == ALICE


def test_ca_from_pem_rejects_mismatch_and_garbage(ca: CertificateAuthority) -> None:
    other_key, _ = OTHER_CA.to_pem()
    _, cert_pem = ca.to_pem()
    for key_pem, pem in [(other_key, cert_pem), (b"junk", cert_pem), (other_key, b"junk")]:
        with pytest.raises(PkiError) as caught:
            CertificateAuthority.from_pem(key_pem, pem)
        assert caught.value.code == "ca_invalid"
    leaf_pem = issue(ca).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(PkiError):
        CertificateAuthority.from_pem(other_key, leaf_pem)


_FUZZ_CA = CertificateAuthority.create(TD, NOW)
_LEAF_DER = _FUZZ_CA.issue_svid(
    make_csr(generate_tls_key()), ALICE, bytes(32), NOW, dns_names=["x.example"]
).public_bytes(serialization.Encoding.DER)


@settings(max_examples=500)
@given(st.data())
def test_mutated_certificates_raise_only_pki_error(data: st.DataObject) -> None:
    bundle = TrustBundle.from_certificates(TD, [_FUZZ_CA.certificate])
    der = bytearray(_LEAF_DER)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(der) - 1))
        der[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(der) // 2, len(der)))
    try:
        chain = load_chain(bytes(der[:cut]))
    except PkiError:
        return
    # The accessors also run on unverified certificates (e.g. when loading identity files).
    for check in (
        lambda: verify_svid(chain, bundle, NOW),
        lambda: spiffe_id_of(chain[0]),
        lambda: noise_public_key_of(chain[0]),
    ):
        with contextlib.suppress(PkiError):
            check()
