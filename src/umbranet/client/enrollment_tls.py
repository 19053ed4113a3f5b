"""TLS for enrollment, before the enrollee has an identity: trust exactly one pinned CA.

An enrollment token names the controller's CA by fingerprint only; the bundle that carries
the certificate itself is fetched over an unverified connection, so an on-path attacker can
add its own CA to it. `pinned_context` therefore trusts the one certificate that matched the
fingerprint and nothing else; `certificate_untrusted` tells a server the pinned CA does not
vouch for (an impostor) apart from one that cannot be reached.
"""

from __future__ import annotations

import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["certificate_untrusted", "pinned_context"]


def pinned_context(ca: x509.Certificate) -> ssl.SSLContext:
    """TLS that trusts one CA certificate and nothing else (host name checked)."""
    pem = ca.public_bytes(serialization.Encoding.PEM).decode("ascii")
    context = ssl.create_default_context(cadata=pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def certificate_untrusted(exc: BaseException) -> bool:
    """Did the TLS handshake fail because the server's certificate is not trusted?"""
    seen: BaseException | None = exc
    for _ in range(8):  # exception chains are short; bound the walk anyway
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
