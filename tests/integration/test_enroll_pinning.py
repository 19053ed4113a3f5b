"""Enrollment pins exactly the CA named by the token, against an on-path attacker.

A real controller (uvicorn, TLS) listens on one loopback port; the enrollment token names
another, where an on-path attacker sits: a TLS-terminating proxy with its own CA that
forwards every request to the real controller and appends its CA (and its ticket key) to
every bundle it relays. Enrollment must refuse to talk to it: the token never reaches the
attacker and no identity file trusts the attacker's CA.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.conftest import free_port, wait_for
from umbranet.client.controller import ControllerClient, ControllerError
from umbranet.controller.home import init_home, load_home
from umbranet.controller.server import build_server
from umbranet.pki import (
    CertificateAuthority,
    IdentityFile,
    SpiffeId,
    generate_tls_key,
    key_to_pem,
)
from umbranet.pki.keys import signing_key_id

pytestmark = pytest.mark.timeout(60)


@dataclass
class Controller:
    admin: IdentityFile
    real_port: int
    proxy_port: int
    ca_pem: str


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    """A real controller on `real_port` whose URL (in tokens) is the proxy's port."""
    real_port, proxy_port = free_port(), free_port()
    now = datetime.now(UTC)
    _, admin = init_home(tmp_path / "home", now, address=f"127.0.0.1:{proxy_port}")
    loaded = load_home(tmp_path / "home")
    server = build_server(loaded, port=real_port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for("controller", lambda: server.started, timeout=20)
        yield Controller(admin, real_port, proxy_port, admin.bundle.ca_pem)
    finally:
        server.should_exit = True
        thread.join(10)
        loaded.db.dispose()


@dataclass
class Attacker:
    """What the on-path proxy saw and did."""

    tokens: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


def _attacker_tls(tmp_path: Path) -> tuple[ssl.SSLContext, str, ed25519.Ed25519PublicKey]:
    now = datetime.now(UTC)
    ca = CertificateAuthority.create("evil.umbra", now - timedelta(minutes=1))
    key = generate_tls_key()
    cert = ca.issue_svid_for_public_key(
        key.public_key(),
        SpiffeId.controller("evil.umbra"),
        None,
        now - timedelta(minutes=1),
        timedelta(days=1),
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
    )
    pem = tmp_path / "evil.pem"
    pem.write_bytes(key_to_pem(key) + cert.public_bytes(serialization.Encoding.PEM))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    ca_pem = ca.certificate.public_bytes(serialization.Encoding.PEM).decode()
    return context, ca_pem, ed25519.Ed25519PrivateKey.generate().public_key()


def _poison(bundle: dict[str, Any], ca_pem: str, key: ed25519.Ed25519PublicKey) -> None:
    bundle["ca_pem"] += ca_pem
    bundle["ticket_keys"][signing_key_id(key)] = base64.b64encode(key.public_bytes_raw()).decode()


async def _proxy(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream: str,
    attacker: Attacker,
    *,
    ca_pem: str,
    key: ed25519.Ed25519PublicKey,
) -> None:
    """One HTTP/1.1 request per connection: forward it, poison any bundle in the answer."""
    with contextlib.suppress(Exception):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        length = int({k.lower(): v for k, v in headers.items()}.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        attacker.requests.append(f"{method} {path}")
        if path == "/v1/enroll":
            attacker.tokens.append(json.loads(body)["token"])
        async with httpx.AsyncClient(base_url=upstream, verify=False) as client:
            answer = await client.request(
                method, path, content=body, headers={"content-type": "application/json"}
            )
        data = answer.json()
        if path == "/v1/bundle":
            _poison(data, ca_pem, key)
        elif path == "/v1/enroll" and "bundle" in data:
            _poison(data["bundle"], ca_pem, key)
        out = json.dumps(data).encode()
        writer.write(
            f"HTTP/1.1 {answer.status_code} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(out)}\r\nconnection: close\r\n\r\n".encode()
            + out
        )
        await writer.drain()
    writer.close()


def _create_identity(controller: Controller, name: str) -> str:
    """As admin, straight to the real controller (the attacker sits only on the victim's path)."""

    async def call() -> str:
        transport = httpx.AsyncHTTPTransport(verify=_admin_context(controller.admin), retries=0)
        async with httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{controller.real_port}", transport=transport
        ) as client:
            response = await client.post(
                "/v1/identities", json={"name": name, "kind": "device", "attributes": []}
            )
            assert response.status_code == 201, response.text
            token: str = response.json()["enrollment_token"]
            return token

    return asyncio.run(call())


def _admin_context(admin: IdentityFile) -> ssl.SSLContext:
    from umbranet.aio.tls import load_identity

    context = ssl.create_default_context(cadata=admin.bundle.ca_pem)
    load_identity(context, admin)
    return context


def test_a_tls_terminating_proxy_that_appends_its_ca_gets_no_token(
    controller: Controller, tmp_path: Path
) -> None:
    token = _create_identity(controller, "victim")
    attacker = Attacker()
    tls, evil_ca, evil_key = _attacker_tls(tmp_path)
    upstream = f"https://127.0.0.1:{controller.real_port}"

    async def run() -> IdentityFile | ControllerError:
        server = await asyncio.start_server(
            lambda r, w: _proxy(r, w, upstream, attacker, ca_pem=evil_ca, key=evil_key),
            "127.0.0.1",
            controller.proxy_port,
            ssl=tls,
        )
        async with server:
            try:
                return await ControllerClient.enroll(token)
            except ControllerError as exc:
                return exc

    result = asyncio.run(run())
    # The bundle fetch (unverified by design) went through the proxy; the enrollment did not.
    assert attacker.requests == ["GET /v1/bundle"]
    assert attacker.tokens == []
    assert isinstance(result, ControllerError)
    assert result.code == "controller_untrusted"


def test_enrollment_refuses_a_plain_http_controller_url(controller: Controller) -> None:
    from umbranet.pki import Signer

    signer = Signer.generate()
    _, token = signer.sign_enrollment_token(
        "spiffe://demo.umbra/device/victim",
        f"http://127.0.0.1:{controller.real_port}",
        controller.admin.bundle.ca_fingerprint(),
        datetime.now(UTC),
    )
    with pytest.raises(ControllerError) as caught:
        asyncio.run(ControllerClient.enroll(token))
    assert caught.value.code == "insecure_url"


def test_without_the_attacker_enrollment_keeps_only_the_pinned_controllers_bundle(
    controller: Controller, tmp_path: Path
) -> None:
    """A pass-through path: the identity's bundle is the controller's, first CA pinned."""
    token = _create_identity(controller, "alice")

    async def run() -> IdentityFile:
        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        async def relay(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            ur, uw = await asyncio.open_connection("127.0.0.1", controller.real_port)
            await asyncio.gather(pipe(r, uw), pipe(ur, w))

        server = await asyncio.start_server(relay, "127.0.0.1", controller.proxy_port)
        async with server:
            return await ControllerClient.enroll(token)

    identity = asyncio.run(run())
    assert identity.bundle.ca_pem == controller.ca_pem
    assert identity.bundle.ticket_keys == controller.admin.bundle.ticket_keys
