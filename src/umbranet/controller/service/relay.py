"""Relay tickets for network mode: the controller's "routers may relay A's datagrams to B".

A router relays sealed WireGuard datagrams only for a pair the controller allowed
(`umbranet.router.relay`). The allowance is an ordinary session ticket with action
``relay`` and service ``wg:<B's X25519 key, hex>``, issued to A and bound to A's
certificate keys, so the router checks it exactly as it checks dial tickets. The controller
hands one out per peer of A's filtered view, so a pair policy does not let talk gets no
ticket, as it gets no key; the view is fetched again on every new epoch, which is also when
routers start refusing older tickets (``ticket_stale``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from datetime import datetime

from umbranet.controller.service.authority import Authority
from umbranet.controller.service.certificates import certificate_keys
from umbranet.controller.store import Identity
from umbranet.pki.tickets import Action, relay_service

__all__ = ["relay_tickets"]


def relay_tickets(
    authority: Authority,
    identity: Identity,
    peer_keys: Iterable[str | None],
    *,
    now: datetime,
    epoch: int,
) -> dict[str, str]:
    """base64 Noise key -> relay ticket for `identity` towards that peer (keys that do not
    decode to 32 bytes get none)."""
    out: dict[str, str] = {}
    binding = certificate_keys(identity)
    for text in peer_keys:
        if not text or text in out:
            continue
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(key) != 32:
            continue
        _, token = authority.signer.sign_ticket(
            identity.spiffe_id,
            relay_service(key),
            Action.RELAY,
            now,
            authority.ticket_lifetime,
            epoch=epoch,
            key_binding=binding,
        )
        out[text] = token
    return out
