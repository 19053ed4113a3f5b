"""Private keys touch no disk when a TLS context is made, and keys at rest are 0600 and
optionally encrypted (issue 9, item 23)."""

from __future__ import annotations

import os
import ssl
import stat
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from umbranet.aio import tls
from umbranet.controller.home import init_home, load_home
from umbranet.pki import PkiError
from umbranet.pki.keys import (
    PASSPHRASE_ENV,
    PASSPHRASE_FILE_ENV,
    key_passphrase,
    open_key_pem,
    read_private_key,
)
from umbranet.testing import LocalNetwork

NOW = datetime.now(UTC).replace(microsecond=0)


class FileSpy:
    """Records every path created through os.open and every temporary directory made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.created: list[str] = []
        self.written: list[bytes] = []
        real_open, real_mkdtemp, real_fdopen = os.open, tempfile.mkdtemp, os.fdopen

        def spy_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & os.O_CREAT:
                self.created.append(str(path))
            return real_open(path, flags, *args, **kwargs)

        def spy_mkdtemp(*args: Any, **kwargs: Any) -> str:
            made = real_mkdtemp(*args, **kwargs)
            self.created.append(made)
            return made

        def spy_fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
            handle = real_fdopen(fd, *args, **kwargs)
            spy = self

            class Recording:
                def __enter__(self) -> Recording:
                    handle.__enter__()
                    return self

                def __exit__(self, *exc: object) -> None:
                    handle.__exit__(*exc)

                def write(self, data: bytes) -> int:
                    spy.written.append(bytes(data))
                    return int(handle.write(data))

                def fileno(self) -> int:
                    return int(handle.fileno())

            return Recording()

        monkeypatch.setattr(os, "open", spy_open)
        monkeypatch.setattr(tempfile, "mkdtemp", spy_mkdtemp)
        monkeypatch.setattr(os, "fdopen", spy_fdopen)


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memfd_create is Linux-only")
def test_a_tls_context_is_made_without_a_key_file(monkeypatch: pytest.MonkeyPatch) -> None:
    identity = LocalNetwork().identity("alice")
    spy = FileSpy(monkeypatch)
    client = tls.link_client_context(identity)
    server = tls.link_server_context(identity)
    assert spy.created == []  # no temporary directory, no file: the key stayed in memory
    assert isinstance(client, ssl.SSLContext) and isinstance(server, ssl.SSLContext)


def test_without_memfd_only_an_encrypted_key_touches_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    identity = LocalNetwork().identity("alice")
    monkeypatch.delattr(os, "memfd_create", raising=False)
    spy = FileSpy(monkeypatch)
    tls.link_client_context(identity)
    assert spy.created, "the fallback writes a file"
    written = b"".join(spy.written)
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in written
    assert identity.key_pem.strip() not in written
    assert not any(os.path.exists(path) for path in spy.created)  # and removes it


def _modes(home: Any) -> dict[str, int]:
    return {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in (home.ca_key, home.signer_key, home.jwt_key, home.server_key)
    }


def test_controller_keys_are_0600_and_a_loose_one_is_tightened(tmp_path: Path) -> None:
    home, _ = init_home(tmp_path, NOW)
    assert set(_modes(home).values()) == {0o600}
    home.ca_key.chmod(0o644)
    home.signer_key.chmod(0o640)
    load_home(tmp_path).db.dispose()
    assert set(_modes(home).values()) == {0o600}


def test_controller_keys_can_be_encrypted_at_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")
    home, _ = init_home(tmp_path, NOW)
    for key in (home.ca_key, home.signer_key, home.jwt_key):
        assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    loaded = load_home(tmp_path)
    loaded.db.dispose()
    assert loaded.authority.ca.certificate.subject is not None

    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(Exception, match=PASSPHRASE_ENV):
        load_home(tmp_path)
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text("wrong\n")
    monkeypatch.setenv(PASSPHRASE_FILE_ENV, str(passphrase_file))
    with pytest.raises(Exception, match="passphrase does not open"):
        load_home(tmp_path)
    passphrase_file.write_text("correct horse battery staple\n")
    load_home(tmp_path).db.dispose()


def test_passphrase_sources_and_plain_keys_still_load(tmp_path: Path) -> None:
    assert key_passphrase({}) is None
    assert key_passphrase({PASSPHRASE_ENV: "x"}) == b"x"
    with pytest.raises(PkiError) as caught:
        key_passphrase({PASSPHRASE_FILE_ENV: str(tmp_path / "missing")})
    assert caught.value.code == "key_passphrase_unreadable"
    identity = LocalNetwork().identity("alice")
    assert open_key_pem(identity.key_pem, b"unused") == identity.key_pem
    path = tmp_path / "plain.key"
    path.write_bytes(identity.key_pem)
    path.chmod(0o666)
    assert read_private_key(path, None) == identity.key_pem
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
