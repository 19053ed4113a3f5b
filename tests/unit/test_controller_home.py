"""The controller home directory: layout, file modes, refusal to re-initialise, loading."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from umbranet.controller.home import (
    ControllerConfig,
    HomeError,
    init_home,
    load_home,
    write_server_certificate,
)
from umbranet.controller.store import Store
from umbranet.pki import IdentityFile, load_chain, verify_svid

NOW = datetime.now(UTC).replace(microsecond=0)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_the_documented_layout(tmp_path: Path) -> None:
    home, admin = init_home(
        tmp_path / "d", NOW, trust_domain="acme.umbra", address="127.0.0.1:9443"
    )
    names = {p.name for p in home.dir.iterdir()}
    assert {
        "ca.key",
        "ca.pem",
        "signer.key",
        "server.key",
        "server.pem",
        "config.json",
        "umbra.db",
    } <= names
    for secret in (home.ca_key, home.signer_key, home.server_key, home.admin_file):
        assert _mode(secret) == 0o600, secret
    assert _mode(home.dir) == 0o700
    config = ControllerConfig.from_json(home.config_json.read_text())
    assert (config.trust_domain, config.address) == ("acme.umbra", "127.0.0.1:9443")
    assert config.db_url.startswith("sqlite:///")

    loaded_admin = IdentityFile.load(home.admin_file)
    assert loaded_admin == admin
    assert admin.spiffe_id == "spiffe://acme.umbra/admin/admin"
    assert admin.controller_url == "https://127.0.0.1:9443"


def test_init_refuses_an_initialised_home(tmp_path: Path) -> None:
    init_home(tmp_path, NOW)
    with pytest.raises(HomeError) as caught:
        init_home(tmp_path, NOW)
    assert caught.value.code == "already_initialised"


def test_init_validates_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(HomeError) as caught:
        init_home(tmp_path / "a", NOW, trust_domain="Not A Domain")
    assert caught.value.code == "invalid_trust_domain"
    with pytest.raises(HomeError) as caught:
        init_home(tmp_path / "b", NOW, address="localhost")
    assert caught.value.code == "invalid_address"


def test_load_needs_an_initialised_home(tmp_path: Path) -> None:
    with pytest.raises(HomeError) as caught:
        load_home(tmp_path)
    assert caught.value.code == "not_initialised"


def test_load_restores_the_authority_and_the_admin(tmp_path: Path) -> None:
    _, admin = init_home(tmp_path, NOW)
    loaded = load_home(tmp_path)
    try:
        assert loaded.authority.bundle == admin.bundle
        with loaded.db.session() as session:
            row = Store(session).identity_by_name("admin")
            assert row is not None and row.kind == "admin"
            assert row.cert_serial == format(admin.certificate.serial_number, "x")
    finally:
        loaded.db.dispose()


def test_server_certificate_names_the_controller_and_its_address(tmp_path: Path) -> None:
    home, _ = init_home(tmp_path, NOW, address="127.0.0.2:8443")
    loaded = load_home(tmp_path)
    try:
        write_server_certificate(home, loaded.authority, loaded.config, NOW)
        cert = load_chain(home.server_pem.read_bytes())[0]
        peer = verify_svid([cert], loaded.authority.bundle, NOW)
        assert str(peer.spiffe_id) == "spiffe://demo.umbra/controller"
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
        assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.2")]
    finally:
        loaded.db.dispose()
