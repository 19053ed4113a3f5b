"""A positive cache of verified peer certificates, for the end-to-end handshake.

Why: every dial presents the same SVID (PEM) again, and parsing plus checking it costs
~20 us on each side of every handshake (the CA signature check is already cached by
`umbranet.pki.svid`; the PEM parse and extension checks are not). Only successes are kept,
keyed by the exact PEM bytes and the trust bundle's CA PEM and trust domain, so an
unverified certificate can never hit the cache. Time is still checked on every use against
the validity windows of the leaf and of every CA in the bundle; outside that intersection the
full check runs again and decides (and raises) exactly as it would without the cache.
Pure: `now` is passed in.
"""

from __future__ import annotations

from datetime import datetime

from umbranet.pki import TrustBundle, VerifiedPeer, load_chain, verify_svid

__all__ = ["verified_svid"]

_LIMIT = 1024
# (PEM, CA PEM, trust domain) -> (peer, valid from, valid until)
_GOOD: dict[tuple[bytes, str, str], tuple[VerifiedPeer, datetime, datetime]] = {}


def verified_svid(cert_pem: bytes, bundle: TrustBundle, now: datetime) -> VerifiedPeer:
    """`verify_svid(load_chain(cert_pem), bundle, now)`, remembering successes."""
    key = (cert_pem, bundle.ca_pem, bundle.trust_domain)
    hit = _GOOD.get(key)
    if hit is not None and now.tzinfo is not None and hit[1] <= now <= hit[2]:
        return hit[0]
    peer = verify_svid(load_chain(cert_pem), bundle, now)
    cas = bundle.ca_certificates
    start = max([peer.not_before, *(ca.not_valid_before_utc for ca in cas)])
    end = min([peer.not_after, *(ca.not_valid_after_utc for ca in cas)])
    if len(_GOOD) >= _LIMIT:
        _GOOD.clear()
    _GOOD[key] = (peer, start, end)
    return peer
