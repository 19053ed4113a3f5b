"""The handshake's positive caches decide exactly as the full checks would: a remembered
certificate or ticket is refused again once it expires, under another trust bundle, or when
the clock goes back; failures are never remembered."""

from __future__ import annotations

from datetime import timedelta

import pytest

from umbranet.pki import PkiError, Signer
from umbranet.pki.tickets import Action
from umbranet.proto.peer_cache import verified_svid, verified_ticket
from umbranet.testing import LocalNetwork

NET = LocalNetwork()
OTHER = LocalNetwork()  # another CA and ticket key
NOW = NET.now


def test_a_remembered_certificate_expires_and_stays_bound_to_its_bundle() -> None:
    alice = NET.identity("alice", lifetime=timedelta(hours=1))
    pem = alice.cert_pem
    first = verified_svid(pem, NET.bundle, NOW)
    assert verified_svid(pem, NET.bundle, NOW + timedelta(minutes=30)) == first
    with pytest.raises(PkiError) as expired:
        verified_svid(pem, NET.bundle, NOW + timedelta(hours=2))
    assert expired.value.code == "cert_expired"
    with pytest.raises(PkiError) as untrusted:
        verified_svid(pem, OTHER.bundle, NOW)
    assert untrusted.value.code == "cert_untrusted"
    with pytest.raises(PkiError):
        verified_svid(pem, NET.bundle, NOW - timedelta(hours=1))  # before it was issued


def test_a_failure_is_never_remembered() -> None:
    stranger = OTHER.identity("mallory")
    for _ in range(2):
        with pytest.raises(PkiError):
            verified_svid(stranger.cert_pem, NET.bundle, NOW)


def test_a_remembered_ticket_expires_and_needs_the_same_bundle() -> None:
    alice = NET.identity("alice2")
    _, token = NET.signer.sign_ticket(alice.spiffe_id, "db", Action.DIAL, NOW)
    ticket = verified_ticket(token, NET.bundle, NOW)
    assert verified_ticket(token, NET.bundle, NOW + timedelta(minutes=5)) == ticket
    with pytest.raises(PkiError) as expired:
        verified_ticket(token, NET.bundle, NOW + timedelta(hours=1))
    assert expired.value.code == "ticket_expired"
    rotated = NET.bundle.without_ticket_key(NET.signer.key_id)
    with pytest.raises(PkiError) as unknown:
        verified_ticket(token, rotated, NOW)
    assert unknown.value.code == "ticket_unknown_key"


def test_a_forged_ticket_is_refused_every_time() -> None:
    alice = NET.identity("alice3")
    _, forged = Signer.generate().sign_ticket(alice.spiffe_id, "db", Action.DIAL, NOW)
    for _ in range(2):
        with pytest.raises(PkiError):
            verified_ticket(forged, NET.bundle, NOW)
