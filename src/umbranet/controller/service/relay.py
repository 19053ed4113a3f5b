"""Relay tickets for network mode: the controller's "routers may relay A's datagrams to B".

A router relays sealed WireGuard datagrams only for a pair the controller allowed
(`umbranet.router.relay`). The allowance is an ordinary session ticket with action
``relay`` and service ``wg:<B's X25519 key, hex>``, issued to A and bound to A's
certificate keys, so the router checks it exactly as it checks dial tickets. The controller
hands one out per peer of A's filtered view, so a pair policy does not let talk gets no
ticket, as it gets no key; the view is fetched again on every new epoch, which is also when
routers start refusing older tickets (``ticket_stale``).

Signing is the view's dearest step for a device with thousands of peers (one signature per
peer per request), so signed tickets are kept (`RelayTicketCache`) and handed out again, for
the same subject, certificate keys, peer key and epoch, while at least `REUSE_MIN_LEFT` of
their life is left: a device keeps the ticket of its last view until its next one (the
agent's safety refresh is every 300 s; it re-presents every 120 s), so a ticket handed out
with less would lapse at the router before the device is given another (``ticket_expired``
and relayed traffic stalls). With the default 10-minute lifetime a ticket is reused for its
first 200 s. Whether a pair gets a ticket at all is still decided on every request (only
peers of the fresh view are asked for), so the cache can never widen what policy allows; a
new epoch (revocation, policy change) empties it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from datetime import datetime, timedelta

from umbranet.controller.service.authority import Authority
from umbranet.controller.service.certificates import certificate_keys
from umbranet.controller.store import Identity
from umbranet.pki.tickets import Action, relay_service

__all__ = ["REUSE_MIN_LEFT", "RelayTicketCache", "relay_tickets"]

# Bounded: past this many tickets the oldest are forgotten (re-signed on next use).
MAX_CACHED = 200_000

# The agent's default refresh interval (300 s) plus a presentation period (120 s) of slack.
REUSE_MIN_LEFT = timedelta(seconds=400)

_Key = tuple[str, tuple[str, ...], bytes]


class RelayTicketCache:
    """Signed relay tickets by (subject, certificate keys, peer key), for one epoch."""

    def __init__(self, max_entries: int = MAX_CACHED) -> None:
        self._max = max_entries
        self._epoch: int | None = None
        self._tickets: dict[_Key, tuple[str, int]] = {}  # -> (token, expiry in unix seconds)
        self.hits = 0
        self.signed = 0

    def get(self, key: _Key, epoch: int, now: datetime) -> str | None:
        if epoch != self._epoch:
            self._tickets.clear()
            self._epoch = epoch
            return None
        found = self._tickets.get(key)
        if found is None:
            return None
        token, expires_at = found
        if expires_at - now.timestamp() < REUSE_MIN_LEFT.total_seconds():
            del self._tickets[key]
            return None
        self.hits += 1
        return token

    def put(self, key: _Key, epoch: int, token: str, expires_at: int) -> None:
        if epoch != self._epoch:
            self._tickets.clear()
            self._epoch = epoch
        if len(self._tickets) >= self._max:
            del self._tickets[next(iter(self._tickets))]
        self._tickets[key] = (token, expires_at)
        self.signed += 1

    def statistics(self) -> dict[str, int]:
        return {"cached": len(self._tickets), "hits": self.hits, "signed": self.signed}


def relay_tickets(
    authority: Authority,
    identity: Identity,
    peer_keys: Iterable[str | None],
    *,
    now: datetime,
    epoch: int,
    cache: RelayTicketCache | None = None,
) -> dict[str, str]:
    """base64 Noise key -> relay ticket for `identity` towards that peer (keys that do not
    decode to 32 bytes get none). With ``cache``, a still-fresh ticket signed earlier for the
    same pair, certificate keys and epoch is reused."""
    out: dict[str, str] = {}
    binding = certificate_keys(identity)
    lifetime = authority.ticket_lifetime
    for text in peer_keys:
        if not text or text in out:
            continue
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(key) != 32:
            continue
        slot = (identity.spiffe_id, tuple(binding), key)
        token = cache.get(slot, epoch, now) if cache is not None else None
        if token is None:
            ticket, token = authority.signer.sign_ticket(
                identity.spiffe_id,
                relay_service(key),
                Action.RELAY,
                now,
                lifetime,
                epoch=epoch,
                key_binding=binding,
            )
            if cache is not None:
                cache.put(slot, epoch, token, ticket.expires_at)
        out[text] = token
    return out
