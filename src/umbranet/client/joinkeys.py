"""Join keys from the client side: redeem one for an identity, and the admin calls.

`enroll_with_join_key` is what a replica runs at start: it reads the key (controller URL, CA
fingerprint), fetches the bundle unverified only to find the CA certificate with that
fingerprint, redeems the key over TLS that trusts exactly that certificate (the secret never
goes anywhere else), and enrolls the new identity with the one-time token it got back, through
`ControllerClient.enroll` (keys made here, only a CSR sent).
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from umbranet.client.controller import ControllerClient, ControllerError
from umbranet.pki import IdentityFile, PkiError, TrustBundle
from umbranet.pki.join_key import parse_join_key

__all__ = [
    "JoinKeyInfo",
    "create_join_key",
    "enroll_with_join_key",
    "list_join_keys",
    "redeem_join_key",
    "revoke_join_key",
]

DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class JoinKeyInfo:
    id: str
    attributes: list[str]
    reusable: bool
    ephemeral_seconds: int | None
    expires_at: str
    created_at: str
    created_by: str
    uses: int
    revoked_at: str | None


async def enroll_with_join_key(
    join_key: str,
    *,
    name_prefix: str | None = None,
    request_timeout: float = DEFAULT_TIMEOUT,
    transport: httpx.AsyncBaseTransport | None = None,
) -> IdentityFile:
    """A new identity of this replica's own, made from a join key (not yet saved)."""
    token = await redeem_join_key(
        join_key, name_prefix=name_prefix, request_timeout=request_timeout, transport=transport
    )
    return await ControllerClient.enroll(
        token, request_timeout=request_timeout, transport=transport
    )


async def redeem_join_key(
    join_key: str,
    *,
    name_prefix: str | None = None,
    request_timeout: float = DEFAULT_TIMEOUT,
    transport: httpx.AsyncBaseTransport | None = None,
) -> str:
    """Trade a join key for a new identity's one-time enrollment token."""
    try:
        parsed = parse_join_key(join_key)
    except ValueError as exc:
        raise ControllerError("join_key_invalid", str(exc), 0) from exc
    url = parsed.controller_url
    if not url.lower().startswith("https://"):
        raise ControllerError("insecure_url", f"the join key names a non-HTTPS URL: {url!r}", 0)
    async with _client(url, False, request_timeout, transport) as insecure:
        offered = await _post_or_get(insecure, "GET", "/v1/bundle")
    ca = _ca_with_fingerprint(offered, parsed.ca_fingerprint)
    body = {"join_key": join_key.strip(), "name_prefix": name_prefix}
    async with _client(url, _trusting(ca), request_timeout, transport) as pinned:
        data = await _post_or_get(pinned, "POST", "/v1/joinkeys/redeem", json=body)
    token = data.get("enrollment_token") if isinstance(data, dict) else None
    if not isinstance(token, str):
        raise ControllerError("bad_response", "the redeem answer lacks an enrollment token", 0)
    return token


# -- admin ---------------------------------------------------------------------------------


async def create_join_key(
    client: ControllerClient,
    *,
    reusable: bool,
    ephemeral_seconds: int | None,
    attributes: list[str],
    expires_seconds: int,
) -> tuple[JoinKeyInfo, str]:
    body = {
        "reusable": reusable,
        "ephemeral_seconds": ephemeral_seconds,
        "attributes": attributes,
        "expires_seconds": expires_seconds,
    }
    data = await client._call("POST", "/v1/joinkeys", json=body)
    return _info(data["key"]), str(data["join_key"])


async def list_join_keys(client: ControllerClient) -> list[JoinKeyInfo]:
    return [_info(item) for item in await client._call("GET", "/v1/joinkeys")]


async def revoke_join_key(client: ControllerClient, key_id: str) -> JoinKeyInfo:
    return _info(await client._call("DELETE", f"/v1/joinkeys/{key_id}"))


# -- helpers -------------------------------------------------------------------------------


def _info(data: Any) -> JoinKeyInfo:
    try:
        return JoinKeyInfo(
            id=str(data["id"]),
            attributes=[str(a) for a in data["attributes"]],
            reusable=bool(data["reusable"]),
            ephemeral_seconds=data["ephemeral_seconds"],
            expires_at=str(data["expires_at"]),
            created_at=str(data["created_at"]),
            created_by=str(data["created_by"]),
            uses=int(data["uses"]),
            revoked_at=data["revoked_at"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ControllerError("bad_response", "the join key answer is malformed", 0) from exc


def _client(
    url: str, verify: ssl.SSLContext | bool, timeout: float, transport: Any
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        verify=verify,
        timeout=timeout,
        transport=transport,
        trust_env=False,
        follow_redirects=False,
    )


async def _post_or_get(http: httpx.AsyncClient, method: str, path: str, *, json: Any = None) -> Any:
    try:
        response = await http.request(method, path, json=json)
    except httpx.TransportError as exc:
        raise ControllerError(
            "unreachable", f"cannot reach the controller at {http.base_url}: {exc}", 0
        ) from exc
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.is_success:
        return data
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and "code" in error:
        raise ControllerError(
            str(error["code"]), str(error.get("message", "")), response.status_code
        )
    raise ControllerError(f"http_{response.status_code}", response.text[:200], response.status_code)


def _ca_with_fingerprint(offered: Any, fingerprint: str) -> x509.Certificate:
    """The one CA certificate of the offered bundle whose SHA-256 is what the key pins."""
    try:
        bundle = TrustBundle.from_dict(offered)
    except PkiError as exc:
        raise ControllerError("bundle_invalid", exc.reason, 0) from exc
    for certificate in bundle.ca_certificates:
        der = certificate.public_bytes(serialization.Encoding.DER)
        if hmac.compare_digest(hashlib.sha256(der).hexdigest(), fingerprint):
            return certificate
    raise ControllerError(
        "ca_mismatch", "the controller's CA does not match the fingerprint in the join key", 0
    )


def _trusting(ca: x509.Certificate) -> ssl.SSLContext:
    """TLS that trusts this one CA certificate and nothing else (host name checked)."""
    context = ssl.create_default_context(
        cadata=ca.public_bytes(serialization.Encoding.PEM).decode("ascii")
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
