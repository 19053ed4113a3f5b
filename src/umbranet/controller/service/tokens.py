"""Enrollment tokens on the controller side: mint one (and remember its id), check one.

The signature and expiry are the PKI's business; single use is the store's: each token's
``jti`` has a row in ``enrollments`` whose ``used_at`` is set, atomically, by the enrollment
that consumes it. A token is also *retired* (``retired_at``) as soon as the identity gets a
newer one, enrolls, or has its certificates revoked: a token leaked before any of those must
not enroll afterwards and lock the owner out.
"""

from __future__ import annotations

from datetime import UTC, datetime

from umbranet.controller.service.authority import Authority
from umbranet.controller.service.errors import Conflict, Unauthenticated
from umbranet.controller.store import Enrollment, Identity, Store
from umbranet.pki import EnrollmentClaims, PkiError, verify_enrollment_token

__all__ = ["check_enrollment_token", "mint_enrollment_token"]


def mint_enrollment_token(
    store: Store, authority: Authority, identity: Identity, now: datetime
) -> str:
    """Sign a token for `identity` and record its id so it can be used exactly once.

    Every earlier unused token of the identity is retired: only the newest one enrolls.
    """
    claims, token = authority.signer.sign_enrollment_token(
        identity.spiffe_id,
        authority.controller_url,
        authority.bundle.ca_fingerprint(),
        now,
        authority.enrollment_lifetime,
    )
    store.retire_enrollments(identity.id, now)
    store.add(
        Enrollment(
            token_id=claims.token_id,
            identity_id=identity.id,
            expires_at=datetime.fromtimestamp(claims.expires_at, UTC),
            created_at=now,
        )
    )
    return token


def check_enrollment_token(
    store: Store, authority: Authority, token: str, now: datetime
) -> tuple[EnrollmentClaims, Enrollment]:
    """Verify signature and expiry and find the unused enrollment row; do not consume it.

    Raises `Unauthenticated` (``token_invalid``, ``token_expired``, ``token_retired``) or
    `Conflict` (``token_used``).
    """
    try:
        claims = verify_enrollment_token(token, authority.bundle.ticket_keys, now)
    except PkiError as exc:
        if exc.code == "token_expired":
            raise Unauthenticated("token_expired", exc.reason) from exc
        raise Unauthenticated("token_invalid", exc.reason) from exc
    enrollment = store.enrollment(claims.token_id)
    if enrollment is None or enrollment.identity.spiffe_id != claims.spiffe_id:
        raise Unauthenticated("token_invalid", "the controller has no record of this token")
    if enrollment.used_at is not None:
        raise Conflict("token_used", "this enrollment token has already been used")
    if enrollment.retired_at is not None:
        raise Unauthenticated(
            "token_retired",
            "this enrollment token was superseded by a newer token, an enrollment or a "
            "revocation; ask the administrator for a new one",
        )
    if now >= enrollment.expires_at:
        raise Unauthenticated("token_expired", "the enrollment token has expired")
    return claims, enrollment
