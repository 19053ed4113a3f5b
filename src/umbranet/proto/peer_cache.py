"""Positive caches of verified peer certificates and tickets, for the end-to-end handshake.

Why: every dial presents the same SVID (PEM) again, and parsing plus checking it costs
~20 us on each side of every handshake (the CA signature check is already cached by
`umbranet.pki.svid`; the PEM parse and extension checks are not). Only successes are kept,
keyed by the exact PEM bytes and the trust bundle's CA PEM and trust domain, so an
unverified certificate can never hit the cache. Time is still checked on every use against
the validity windows of the leaf and of every CA in the bundle; outside that intersection the
full check runs again and decides (and raises) exactly as it would without the cache.
Tickets likewise (~15 us each: a host sees the same dial ticket on every dial for its
lifetime): a success is kept per token and bundle object and reused only while the clock is
between the moment it was checked and the ticket's expiry; the caller still compares its
identity, service and action every time. Pure: `now` is passed in.
"""

from __future__ import annotations

from datetime import datetime

from umbranet.pki import Ticket, TrustBundle, VerifiedPeer, load_chain, verify_svid, verify_ticket

__all__ = ["verified_svid", "verified_ticket"]

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


# token -> (ticket, the bundle object it was checked against, when: unix seconds)
_TICKETS: dict[str, tuple[Ticket, TrustBundle, float]] = {}


def verified_ticket(token: str, bundle: TrustBundle, now: datetime) -> Ticket:
    """`verify_ticket(token, bundle, now)`, remembering successes (see the module doc)."""
    hit = _TICKETS.get(token)
    if hit is not None and now.tzinfo is not None:
        ticket, checked_bundle, checked_at = hit
        if checked_bundle is bundle and checked_at <= now.timestamp() < ticket.expires_at:
            return ticket
    ticket = verify_ticket(token, bundle, now)
    if len(_TICKETS) >= _LIMIT:
        _TICKETS.clear()
    _TICKETS[token] = (ticket, bundle, now.timestamp())
    return ticket
