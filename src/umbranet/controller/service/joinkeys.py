"""Join keys: give every replica its own identity from one key an operator hands out.

Three replicas sharing one identity file lock each other out (each renewal supersedes the
others' certificates). A join key instead *creates* an identity per replica: the replica
redeems the key (`redeem`) for a fresh identity named ``<prefix><random>`` carrying the key's
attributes, plus a one-time enrollment token for it, and then enrolls as usual (its keys made
locally, only a CSR sent).

The key's text (`umbranet.pki.join_key`) names the controller and the CA to pin, so the replica
knows where to go before it trusts anything. The controller stores only SHA-256(secret).

Refusals (all audited by the caller's transaction rules, and returned as service errors):
``join_key_invalid`` (unknown id, wrong secret, malformed), ``join_key_revoked``,
``join_key_expired`` (401), ``join_key_used`` (409, a single-use key already redeemed),
``invalid_name_prefix`` (400).

Ephemeral keys: identities made with one are removed once offline longer than the key says.
"Online" means holding the controller's event stream open (every SDK context and agent does);
`Presence` counts those streams and `sweep_ephemeral` moves ``last_seen_at`` and removes the
identities whose last sighting is too old. With several controller replicas on one database
each sees only its own streams, but each writes ``last_seen_at`` for them at every sweep (every
30 s, and the shortest limit is 60 s), so no replica removes an identity another one sees.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa

from umbranet.controller.service.authority import Authority
from umbranet.controller.service.errors import BadRequest, Conflict, NotFound, Unauthenticated
from umbranet.controller.service.identities import new_identity_row
from umbranet.controller.service.tokens import mint_enrollment_token
from umbranet.controller.service.validation import check_attributes
from umbranet.controller.store import Identity, Store
from umbranet.controller.store.joinkey_models import JoinKey, JoinKeyMember
from umbranet.pki.join_key import format_join_key, parse_join_key

__all__ = [
    "MAX_LIFETIME",
    "Presence",
    "create_join_key",
    "list_join_keys",
    "redeem",
    "revoke_join_key",
    "sweep_ephemeral",
]

MAX_LIFETIME = timedelta(days=365)
DEFAULT_PREFIX = "node-"
# A prefix leaves room for the random suffix within the 63-character name limit.
PREFIX_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,47}")
SUFFIX_BYTES = 4  # 8 hex characters: 4 billion names per prefix


def create_join_key(
    store: Store,
    authority: Authority,
    *,
    reusable: bool,
    ephemeral_seconds: int | None,
    attributes: Iterable[str],
    lifetime: timedelta,
    actor: str,
    now: datetime,
) -> tuple[JoinKey, str]:
    """A new join key row and its text (the only time the secret is seen)."""
    if not timedelta(minutes=1) <= lifetime <= MAX_LIFETIME:
        raise BadRequest("invalid_lifetime", "a join key lives between 1 minute and 365 days")
    if ephemeral_seconds is not None and not 60 <= ephemeral_seconds <= 365 * 86400:
        raise BadRequest("invalid_ephemeral", "offline time must be 1 minute to 365 days")
    secret = secrets.token_bytes(32)
    row = JoinKey(
        id=secrets.token_hex(8),
        secret_sha256=hashlib.sha256(secret).hexdigest(),
        attributes=check_attributes(attributes),
        reusable=reusable,
        ephemeral_seconds=ephemeral_seconds,
        expires_at=now + lifetime,
        created_at=now,
        created_by=actor,
        uses=0,
    )
    store.session.add(row)
    store.session.flush()
    store.audit(
        now,
        actor,
        "joinkey.create",
        row.id,
        {
            "reusable": reusable,
            "ephemeral_seconds": ephemeral_seconds,
            "attributes": list(row.attributes),
            "expires_at": row.expires_at.isoformat(),
        },
    )
    text = format_join_key(
        authority.controller_url, authority.bundle.ca_fingerprint(), row.id, secret
    )
    return row, text


def list_join_keys(store: Store) -> Sequence[JoinKey]:
    return store.session.scalars(sa.select(JoinKey).order_by(JoinKey.created_at)).all()


def revoke_join_key(store: Store, key_id: str, *, actor: str, now: datetime) -> JoinKey:
    """No further identities from this key; the ones it made stay (disable them by name)."""
    row = store.session.get(JoinKey, key_id)
    if row is None:
        raise NotFound("unknown_join_key", f"no join key {key_id!r}")
    if row.revoked_at is None:
        row.revoked_at = now
        store.audit(now, actor, "joinkey.revoke", row.id, {})
    return row


def redeem(
    store: Store,
    authority: Authority,
    *,
    join_key: str,
    name_prefix: str | None,
    now: datetime,
) -> tuple[Identity, str]:
    """A new identity for one replica, and its one-time enrollment token."""
    try:
        parsed = parse_join_key(join_key)
    except ValueError as exc:
        raise Unauthenticated("join_key_invalid", str(exc)) from exc
    row = store.session.get(JoinKey, parsed.key_id)
    given = hashlib.sha256(parsed.secret).hexdigest()
    if row is None or not hmac.compare_digest(row.secret_sha256, given):
        raise Unauthenticated("join_key_invalid", "this join key is not known to the controller")
    if row.revoked_at is not None:
        raise Unauthenticated("join_key_revoked", "this join key was revoked")
    if now >= row.expires_at:
        raise Unauthenticated("join_key_expired", "this join key has expired; ask for a new one")
    prefix = DEFAULT_PREFIX if name_prefix is None else name_prefix
    if PREFIX_PATTERN.fullmatch(prefix) is None:
        raise BadRequest("invalid_name_prefix", f"name prefix must match {PREFIX_PATTERN.pattern}")
    # One atomic step decides a race between two replicas redeeming a single-use key.
    claimed = store.session.execute(
        sa.update(JoinKey)
        .where(JoinKey.id == row.id, sa.or_(JoinKey.reusable.is_(True), JoinKey.uses == 0))
        .values(uses=JoinKey.uses + 1)
        .execution_options(synchronize_session=False)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        raise Conflict("join_key_used", "this single-use join key has already been used")
    name = f"{prefix}{secrets.token_hex(SUFFIX_BYTES)}"
    identity = new_identity_row(
        store, authority, name=name, kind="workload", attributes=row.attributes, now=now
    )
    store.session.add(
        JoinKeyMember(
            identity_id=identity.id,
            join_key_id=row.id,
            ephemeral_seconds=row.ephemeral_seconds,
            last_seen_at=now,
        )
    )
    token = mint_enrollment_token(store, authority, identity, now)
    store.audit(
        now,
        f"joinkey:{row.id}",
        "identity.joined",
        identity.name,
        {"join_key": row.id, "ephemeral": row.ephemeral_seconds is not None},
    )
    return identity, token


class Presence:
    """Which identities hold the event stream open now (thread-safe: the sweeper reads it)."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def enter(self, spiffe_id: str) -> None:
        with self._lock:
            self._open[spiffe_id] += 1

    def leave(self, spiffe_id: str) -> None:
        with self._lock:
            self._open[spiffe_id] -= 1
            if self._open[spiffe_id] <= 0:
                del self._open[spiffe_id]

    def online(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._open)


def sweep_ephemeral(
    store: Store, online: frozenset[str], now: datetime, *, remove: bool = True
) -> list[str]:
    """Note who is online; remove ephemeral identities offline past their limit (names),
    unless `remove` is false (a replica not running the cluster's periodic jobs)."""
    rows = store.session.execute(
        sa.select(JoinKeyMember, Identity)
        .join(Identity, Identity.id == JoinKeyMember.identity_id)
        .where(JoinKeyMember.ephemeral_seconds.is_not(None))
    ).all()
    removed: list[str] = []
    for member, identity in rows:
        if identity.spiffe_id in online:
            member.last_seen_at = now
            continue
        if not remove:
            continue
        assert member.ephemeral_seconds is not None
        if now - member.last_seen_at > timedelta(seconds=member.ephemeral_seconds):
            store.audit(
                now,
                "controller",
                "identity.ephemeral_removed",
                identity.name,
                {"join_key": member.join_key_id, "last_seen_at": member.last_seen_at.isoformat()},
            )
            store.session.delete(member)
            store.delete(identity)
            removed.append(identity.name)
    return removed
