"""The text of a join key: where the controller is, which CA to pin, which key, the secret.

``ujk1.<payload>.<secret>``, both parts base64url without padding; the payload is JSON
``{"u": controller URL, "f": SHA-256 hex of the CA certificate, "k": key id}``. A replica reads
it before it trusts anything, exactly like an enrollment token's unverified claims; unlike a
token it carries no signature: the secret is the credential, checked by the controller (which
keeps only its SHA-256). See `umbranet.controller.service.joinkeys`.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

__all__ = ["JOIN_KEY_PREFIX", "JoinKeyText", "format_join_key", "parse_join_key"]

JOIN_KEY_PREFIX = "ujk1."
MAX_TEXT = 4096
MIN_SECRET = 16


@dataclass(frozen=True, slots=True)
class JoinKeyText:
    """What a join key says about itself."""

    controller_url: str
    ca_fingerprint: str
    key_id: str
    secret: bytes = field(repr=False)


def format_join_key(controller_url: str, ca_fingerprint: str, key_id: str, secret: bytes) -> str:
    payload = json.dumps({"u": controller_url, "f": ca_fingerprint, "k": key_id}).encode()
    return f"{JOIN_KEY_PREFIX}{_b64(payload)}.{_b64(secret)}"


def parse_join_key(text: str) -> JoinKeyText:
    """Split a join key; `ValueError` with a reason when it is not one."""
    text = text.strip()
    if not text.startswith(JOIN_KEY_PREFIX) or len(text) > MAX_TEXT:
        raise ValueError(f"a join key starts with {JOIN_KEY_PREFIX!r} (at most {MAX_TEXT} bytes)")
    payload_text, sep, secret_text = text[len(JOIN_KEY_PREFIX) :].partition(".")
    if not sep:
        raise ValueError("a join key has a payload and a secret")
    try:
        payload = json.loads(_unb64(payload_text))
        secret = _unb64(secret_text)
    except (ValueError, binascii.Error) as exc:
        raise ValueError("the join key is not valid base64url and JSON") from exc
    if not isinstance(payload, dict) or not all(
        isinstance(payload.get(k), str) for k in ("u", "f", "k")
    ):
        raise ValueError("the join key's payload lacks the controller, CA or key id")
    if len(secret) < MIN_SECRET:
        raise ValueError("the join key's secret is too short")
    return JoinKeyText(payload["u"], payload["f"], payload["k"], secret)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
