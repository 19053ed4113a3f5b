"""Errors of the PKI layer: what went wrong with a peer's credential, or with our own call.

Two sides, as in h11: `PkiError` means the *input* is bad (a peer's certificate, a token, a CSR,
a file on disk) and carries a stable machine ``code`` that callers map to HTTP errors, wire close
codes and metrics; `PkiUsageError` means *we* called the API wrongly (a naive datetime, a
negative lifetime) and is a `ValueError`, because it is a bug to fix rather than a fault to count.

The codes are listed in ``docs/architecture.md``; this module adds a few for local data
(``key_invalid``, ``bundle_invalid``, ``identity_file_invalid``, ...), all in `CODES`.
"""

from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

__all__ = ["CODES", "PARSE_ERRORS", "PkiError", "PkiUsageError", "require_utc"]

CODES: frozenset[str] = frozenset(
    {
        # certificates (verify_svid)
        "cert_expired",
        "cert_not_yet_valid",
        "cert_untrusted",
        "not_svid",
        "wrong_trust_domain",
        # issuance
        "csr_invalid",
        "noise_key_invalid",
        "noise_proof_invalid",
        # enrollment tokens
        "token_malformed",
        "token_forged",
        "token_expired",
        # session tickets
        "ticket_malformed",
        "ticket_forged",
        "ticket_expired",
        "ticket_unknown_key",
        # JWT-SVIDs (pki.jwt_svid)
        "jwt_malformed",
        "jwt_forged",
        "jwt_expired",
        "jwt_unknown_key",
        "jwt_wrong_audience",
        "jwt_bundle_invalid",
        # names and stored material
        "spiffe_id_invalid",
        "key_invalid",
        "ca_invalid",
        "bundle_invalid",
        "identity_file_invalid",
        "identity_file_insecure",
        # keys at rest (pki.keys)
        "key_encrypted",
        "key_passphrase_wrong",
        "key_passphrase_unreadable",
    }
)


PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.InvalidVersion,
)
"""What cryptography raises for malformed keys, certificates and CSRs (it parses lazily, so
extension errors surface on first access); callers turn these into a `PkiError`."""


class PkiError(Exception):
    """A credential or input failed a check; ``code`` is stable, ``reason`` is for humans.

    The reason never contains key material or whole tokens, so it is safe to log and to send
    back to the peer.
    """

    def __init__(self, code: str, reason: str) -> None:
        if code not in CODES:
            raise PkiUsageError(f"unknown PkiError code {code!r}")
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"

    def __repr__(self) -> str:
        return f"PkiError({self.code!r}, {self.reason!r})"


class PkiUsageError(ValueError):
    """The caller misused the API (local bug), e.g. passed a naive datetime."""


def require_utc(now: datetime) -> datetime:
    """Return ``now`` in UTC, refusing naive datetimes.

    A naive datetime would be silently read as local time by `datetime.timestamp`, making every
    expiry check wrong by the host's UTC offset; that is a bug in the caller, so we fail loudly.
    """
    if not isinstance(now, datetime):
        raise PkiUsageError(f"now must be a datetime, not {type(now).__name__}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise PkiUsageError("now must be timezone-aware (use datetime.now(UTC))")
    return now.astimezone(UTC)
