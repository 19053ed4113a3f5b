"""The shape of umbranet.pki: exports, error contract, purity, and that OpenSSL accepts our
certificates for mutual TLS (in memory, no sockets)."""

import ast
import ssl
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from umbranet import pki
from umbranet.pki import (
    CODES,
    Action,
    CertificateAuthority,
    PkiError,
    PkiUsageError,
    Signer,
    SpiffeId,
    TrustBundle,
    generate_tls_key,
    key_to_pem,
    load_chain,
    make_csr,
    verify_svid,
    verify_ticket,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
PKI_DIR = Path(pki.__file__).parent


def test_all_matches_public_names() -> None:
    # Only identifiers: with the package's pytest plugin installed, pytest rewrites the
    # package's modules and leaves helpers such as ``@py_builtins`` in their namespaces.
    public = {name for name in vars(pki) if name.isidentifier() and not name.startswith("_")}
    submodules = {p.stem for p in PKI_DIR.glob("*.py") if p.stem != "__init__"}
    assert set(pki.__all__) == public - (submodules - {"keys"})
    assert len(pki.__all__) == len(set(pki.__all__))


@pytest.mark.parametrize("module", sorted(PKI_DIR.glob("*.py")), ids=lambda p: p.name)
def test_module_is_pure_and_documented(module: Path) -> None:
    tree = ast.parse(module.read_text())
    assert ast.get_docstring(tree), f"{module.name} needs a module docstring"
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "socket", "ssl", "time"}
    assert len(module.read_text().splitlines()) < 600


def test_pki_error_carries_code_and_reason() -> None:
    error = PkiError("cert_expired", "the certificate has expired")
    assert (error.code, error.reason) == ("cert_expired", "the certificate has expired")
    assert str(error) == "cert_expired: the certificate has expired"
    with pytest.raises(PkiUsageError):
        PkiError("no_such_code", "x")
    architecture_codes = {
        "cert_expired", "cert_not_yet_valid", "cert_untrusted", "not_svid",
        "wrong_trust_domain", "csr_invalid", "token_malformed", "token_forged",
        "token_expired", "ticket_malformed", "ticket_forged", "ticket_expired",
        "ticket_unknown_key",
    }  # fmt: skip
    assert architecture_codes <= CODES


def test_usage_error_is_a_value_error() -> None:
    assert issubclass(PkiUsageError, ValueError)
    assert not issubclass(PkiError, ValueError)


def test_naive_datetimes_are_refused_everywhere() -> None:
    naive = datetime(2030, 1, 1, 12, 0)
    with pytest.raises(PkiUsageError):
        CertificateAuthority.create("td", naive)
    ca = CertificateAuthority.create("td", NOW)
    signer = Signer.generate()
    bundle = TrustBundle.from_certificates("td", [ca.certificate], [signer.public_key])
    cert = ca.issue_svid(make_csr(generate_tls_key()), "spiffe://td/device/a", None, NOW)
    with pytest.raises(PkiUsageError):
        verify_svid([cert], bundle, naive)
    _, token = signer.sign_ticket("spiffe://td/device/a", "db", Action.DIAL, NOW)
    with pytest.raises(PkiUsageError):
        verify_ticket(token, bundle, naive)
    with pytest.raises(PkiUsageError):
        signer.sign_enrollment_token("spiffe://td/device/a", "https://x", "0" * 64, naive)


def test_other_timezones_are_converted() -> None:
    ca = CertificateAuthority.create("td", NOW)
    bundle = TrustBundle.from_certificates("td", [ca.certificate])
    cert = ca.issue_svid(make_csr(generate_tls_key()), "spiffe://td/device/a", None, NOW)
    plus_two = NOW.astimezone(timezone(timedelta(hours=2)))
    assert verify_svid([cert], bundle, plus_two).not_before == cert.not_valid_before_utc


Side = tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]  # (tls object, incoming, outgoing)


def _handshake(client: Side, server: Side) -> None:
    """Pump bytes between two in-memory TLS endpoints until both finish the handshake."""
    done = {id(client): False, id(server): False}
    for _ in range(20):
        for side in (client, server):
            if not done[id(side)]:
                try:
                    side[0].do_handshake()
                    done[id(side)] = True
                except ssl.SSLWantReadError:
                    pass
        server[1].write(client[2].read())
        client[1].write(server[2].read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_openssl_accepts_svids_for_mutual_tls(tmp_path: Path) -> None:
    # The real clock: OpenSSL checks validity against it.
    now = datetime.now(UTC)
    ca = CertificateAuthority.create("demo.umbra", now)
    bundle = TrustBundle.from_certificates("demo.umbra", [ca.certificate])
    paths = {}
    for role, spiffe_id in (
        ("server", SpiffeId.controller("demo.umbra")),
        ("client", SpiffeId.for_identity("demo.umbra", "device", "alice")),
    ):
        key = generate_tls_key()
        cert = ca.issue_svid(make_csr(key), spiffe_id, None, now, dns_names=["localhost"])
        (tmp_path / f"{role}.key").write_bytes(key_to_pem(key))
        (tmp_path / f"{role}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[role] = (str(tmp_path / f"{role}.pem"), str(tmp_path / f"{role}.key"))

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*paths["server"])
    server_ctx.load_verify_locations(cadata=bundle.ca_pem)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_cert_chain(*paths["client"])
    client_ctx.load_verify_locations(cadata=bundle.ca_pem)

    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    _handshake((client, c_in, c_out), (server, s_in, s_out))

    server_seen = server.getpeercert(binary_form=True)
    client_seen = client.getpeercert(binary_form=True)
    assert server_seen and client_seen
    assert str(verify_svid(load_chain(server_seen), bundle, now).spiffe_id) == (
        "spiffe://demo.umbra/device/alice"
    )
    assert verify_svid(load_chain(client_seen), bundle, now).spiffe_id.is_controller
