"""Signed, versioned trust-bundle updates: how a rotation reaches identities without
re-enrollment.

The controller signs each new bundle with every ticket key it still holds (the new one and
those being retired), so a holder can check an update against the bundle it already trusts:
``ub1.<claims>.<Ed25519 signature>`` with claims ``{"ver": version, "iat": unix seconds,
"kid": signing key id, "bundle": {trust bundle}}``. A holder accepts an update only if a key
of its *current* bundle signed it, the trust domain is the same and the version is higher
than its own: a replayed older bundle (say, one that still trusts a retired key) is refused.
"""

from __future__ import annotations

from collections.abc import Iterable

from umbranet.pki.bundle import TrustBundle
from umbranet.pki.errors import PkiError
from umbranet.pki.tokens import TokenFormatError, claim_int, claim_str, decode_token

__all__ = ["BUNDLE_UPDATE_PREFIX", "apply_bundle_updates", "verify_bundle_update"]

BUNDLE_UPDATE_PREFIX = "ub1"


def verify_bundle_update(token: str, trusted: TrustBundle) -> TrustBundle:
    """The bundle in `token` if `trusted` vouches for it and it is newer.

    Raises PkiError ``bundle_invalid`` (malformed, unknown key, bad signature, other trust
    domain, not newer).
    """
    try:
        decoded = decode_token(token, BUNDLE_UPDATE_PREFIX)
        version = claim_int(decoded.claims, "ver")
        key_id = claim_str(decoded.claims, "kid", 64)
    except TokenFormatError as exc:
        raise PkiError("bundle_invalid", f"bundle update: {exc.reason}") from exc
    key = trusted.ticket_keys.get(key_id)
    if key is None:
        raise PkiError("bundle_invalid", "the bundle update is signed by a key we do not trust")
    if not decoded.signature_valid(key):
        raise PkiError("bundle_invalid", "the bundle update's signature is invalid")
    bundle = TrustBundle.from_dict(decoded.claims.get("bundle"))
    if bundle.version != version:
        raise PkiError("bundle_invalid", "the bundle update's version does not match")
    if bundle.trust_domain != trusted.trust_domain:
        raise PkiError("bundle_invalid", "the bundle update is for another trust domain")
    if bundle.version <= trusted.version:
        raise PkiError("bundle_invalid", "the bundle update is not newer than ours")
    return bundle


def apply_bundle_updates(tokens: Iterable[object], trusted: TrustBundle) -> TrustBundle:
    """The newest bundle among `tokens` that `trusted` vouches for, else `trusted` itself."""
    best = trusted
    for token in tokens:
        if not isinstance(token, str):
            continue
        try:
            candidate = verify_bundle_update(token, trusted)
        except PkiError:
            continue
        if candidate.version > best.version:
            best = candidate
    return best
