"""NAT traversal at the controller: STUN servers, candidate signalling, TURN credentials.

Signalling reuses the filtered view as its gate: an identity's candidates are served only to
identities whose view lists it as a peer, the same rule that decides who learns its key, so
a pair policy does not allow never learns where the other one is.

TURN credentials follow coturn's shared-secret REST scheme (``use-auth-secret``): username
``<unix expiry>:<SPIFFE ID>``, password ``base64(HMAC-SHA1(secret, username))``. coturn checks
the HMAC and the expiry itself, so a credential stops working at its expiry without the
controller being asked again, and no per-user state lives on the TURN server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from umbranet.controller.service.addresses import parse_endpoint
from umbranet.controller.service.errors import BadRequest
from umbranet.controller.store import Identity, Store
from umbranet.controller.store.nat_models import NetworkCandidates, RouterStun, TurnSettings

__all__ = [
    "MAX_CANDIDATES",
    "NAT_KINDS",
    "TurnCredential",
    "candidates_of",
    "set_candidates",
    "set_router_stun",
    "set_turn",
    "stun_servers",
    "turn_credential",
    "turn_password",
]

MAX_CANDIDATES = 8
NAT_KINDS = {"unknown", "no-nat", "endpoint-independent", "endpoint-dependent", "udp-blocked"}
_CANDIDATE_KINDS = {"host", "srflx", "relay"}


@dataclass(frozen=True, slots=True)
class TurnCredential:
    urls: list[str]
    username: str
    password: str
    realm: str
    expires: int


def set_router_stun(store: Store, router: Identity, host: str, port: int, now: datetime) -> str:
    address = parse_endpoint(host, port)
    row = store.session.get(RouterStun, router.id)
    if row is None:
        store.session.add(RouterStun(identity_id=router.id, address=address, updated_at=now))
    else:
        row.address, row.updated_at = address, now
    return address


def stun_servers(store: Store) -> dict[str, str]:
    """Every router's STUN address, mapped to the router's name (for "home router")."""
    rows = (
        store.session.query(RouterStun, Identity.name)
        .join(Identity, Identity.id == RouterStun.identity_id)
        .order_by(Identity.name)
        .all()
    )
    return {row.address: name for row, name in rows}


def set_candidates(
    store: Store, identity: Identity, candidates: list[dict[str, object]], nat: str, now: datetime
) -> list[dict[str, object]]:
    """Store what the caller says its WireGuard port is reachable at (IP literals only)."""
    if nat not in NAT_KINDS:
        raise BadRequest("invalid_candidate", f"unknown NAT kind {nat!r}")
    if len(candidates) > MAX_CANDIDATES:
        raise BadRequest("invalid_candidate", f"at most {MAX_CANDIDATES} candidates")
    clean: list[dict[str, object]] = []
    for raw in candidates:
        kind, host, port = raw.get("kind"), raw.get("host"), raw.get("port")
        if kind not in _CANDIDATE_KINDS or not isinstance(host, str) or not isinstance(port, int):
            raise BadRequest(
                "invalid_candidate", "a candidate is {kind: host|srflx|relay, host, port}"
            )
        address = parse_endpoint(host, port)
        clean.append({"kind": kind, "host": address.rpartition(":")[0].strip("[]"), "port": port})
    text = json.dumps(clean)
    row = store.session.get(NetworkCandidates, identity.id)
    if row is None:
        store.session.add(
            NetworkCandidates(identity_id=identity.id, candidates=text, nat=nat, updated_at=now)
        )
    else:
        row.candidates, row.nat, row.updated_at = text, nat, now
    return clean


def candidates_of(store: Store, peers: list[Identity]) -> dict[str, dict[str, object]]:
    """Stored candidates of `peers` (already filtered by the caller's view), by SPIFFE ID."""
    out: dict[str, dict[str, object]] = {}
    by_id = {peer.id: peer for peer in peers}
    if not by_id:
        return out
    # One query for every peer (not one each): a device can have thousands of peers.
    query = sa.select(NetworkCandidates)
    if len(by_id) <= 500:  # a bound list stays under every backend's parameter limit
        query = query.where(NetworkCandidates.identity_id.in_(list(by_id)))
    for row in store.session.scalars(query):
        peer = by_id.get(row.identity_id)
        if peer is not None:
            out[peer.spiffe_id] = {
                "candidates": json.loads(row.candidates),
                "nat": row.nat,
                "updated_at": row.updated_at.isoformat(),
            }
    return out


def set_turn(store: Store, urls: list[str], realm: str, secret: str, ttl_seconds: int) -> None:
    if not urls or not all(u.startswith(("turn:", "turns:")) for u in urls):
        raise BadRequest("invalid_turn", "TURN URLs must start with turn: or turns:")
    if not secret or not realm or not 60 <= ttl_seconds <= 86400:
        raise BadRequest("invalid_turn", "TURN needs a secret, a realm and a ttl of 60-86400 s")
    row = store.session.get(TurnSettings, 1)
    if row is None:
        row = TurnSettings(id=1, urls="", realm="", secret="", ttl_seconds=0)
        store.session.add(row)
    row.urls, row.realm, row.secret, row.ttl_seconds = json.dumps(urls), realm, secret, ttl_seconds


def turn_password(secret: str, username: str) -> str:
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def turn_credential(store: Store, identity: Identity, now: datetime) -> TurnCredential | None:
    row = store.session.get(TurnSettings, 1)
    if row is None:
        return None
    expires = int(now.timestamp()) + row.ttl_seconds
    username = f"{expires}:{identity.spiffe_id}"
    return TurnCredential(
        json.loads(row.urls), username, turn_password(row.secret, username), row.realm, expires
    )
