"""Use cases for identities: create, list, look up, disable, enable, new enrollment token.

Every change is written to the audit log in the same transaction as the change itself, so the
log never claims something that was rolled back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from umbranet.controller.service.authority import Authority
from umbranet.controller.service.certificates import certificate_keys
from umbranet.controller.service.errors import Conflict, NotFound
from umbranet.controller.service.tokens import mint_enrollment_token
from umbranet.controller.service.validation import check_attributes, check_kind, check_name
from umbranet.controller.store import Conflict as StoreConflict
from umbranet.controller.store import Identity, Store
from umbranet.pki import SpiffeId

__all__ = [
    "create_identity",
    "disable_identity",
    "enable_identity",
    "get_identity",
    "list_identities",
    "new_enrollment",
    "new_identity_row",
]


def create_identity(
    store: Store,
    authority: Authority,
    *,
    name: str,
    kind: str = "device",
    attributes: Iterable[str] = (),
    actor: str,
    now: datetime,
) -> tuple[Identity, str]:
    """A new enabled identity and its first enrollment token."""
    identity = new_identity_row(
        store, authority, name=name, kind=check_kind(kind), attributes=attributes, now=now
    )
    token = mint_enrollment_token(store, authority, identity, now)
    store.audit(
        now,
        actor,
        "identity.create",
        identity.name,
        {"kind": identity.kind, "attributes": list(identity.attributes)},
    )
    return identity, token


def new_identity_row(
    store: Store,
    authority: Authority,
    *,
    name: str,
    kind: str,
    attributes: Iterable[str],
    now: datetime,
) -> Identity:
    """Insert the identity row (no token, no audit); shared with routers and `init`."""
    check_name(name)
    spiffe_id = str(SpiffeId.for_identity(authority.trust_domain, kind, name))
    identity = Identity(
        name=name,
        kind=kind,
        spiffe_id=spiffe_id,
        attributes=check_attributes(attributes),
        enabled=True,
        created_at=now,
    )
    if store.identity_by_name(name) is not None:
        raise Conflict("name_taken", f"an identity named {name!r} already exists")
    try:
        store.add(identity)
    except StoreConflict as exc:
        raise Conflict("name_taken", f"an identity named {name!r} already exists") from exc
    return identity


def list_identities(store: Store) -> Sequence[Identity]:
    return store.identities()


def get_identity(store: Store, name: str) -> Identity:
    identity = store.identity_by_name(name)
    if identity is None:
        raise NotFound("unknown_identity", f"no identity named {name!r}")
    return identity


def disable_identity(store: Store, name: str, *, actor: str, now: datetime) -> Identity:
    """Refuse the identity's tickets and API calls from now on (its certificate stays valid
    until expiry, but every check of the identity row fails)."""
    identity = get_identity(store, name)
    before = identity.enabled
    identity.enabled = False
    store.audit(now, actor, "identity.disable", name, _enabled_change(before, False))
    return identity


def enable_identity(store: Store, name: str, *, actor: str, now: datetime) -> Identity:
    identity = get_identity(store, name)
    before = identity.enabled
    identity.enabled = True
    store.audit(now, actor, "identity.enable", name, _enabled_change(before, True))
    return identity


def revoke_certificates(
    store: Store, authority: Authority, name: str, *, actor: str, now: datetime
) -> tuple[str, list[str]]:
    """Revoke every certificate the identity holds (a stolen key, a lost device).

    Its certificates stop working at the controller at once (``cert_revoked``); the caller
    bumps the epoch so every outstanding ticket goes stale and routers close the identity's
    live circuits and bindings. The identity stays enabled: it enrolls again with the
    returned one-time token, on a new key; every earlier unused token is retired. Returns the
    token and the revoked certificates' key fingerprints (pushed to routers, which close
    links made with them).
    """
    identity = get_identity(store, name)
    keys = certificate_keys(identity)
    before = _drop_certificates(identity)
    token = mint_enrollment_token(store, authority, identity, now)
    store.audit(now, actor, "identity.revoke", name, {"serials": before})
    return token, keys


def new_enrollment(
    store: Store, authority: Authority, name: str, *, actor: str, now: datetime
) -> tuple[str, list[str] | None]:
    """A fresh enrollment token for an existing identity (a new device, a lost key).

    An identity has one key at a time, so a new token means the old key is gone or about to
    be replaced: its certificates are revoked now rather than left valid for the key that
    may be in someone else's hands. Returns the token and the revoked certificates' key
    fingerprints, None if there were no certificates (otherwise the caller bumps the epoch,
    as for `revoke_certificates`).
    """
    identity = get_identity(store, name)
    keys = certificate_keys(identity)
    before = _drop_certificates(identity)
    token = mint_enrollment_token(store, authority, identity, now)
    store.audit(now, actor, "identity.enrollment", name, {"revoked_serials": before})
    return token, keys if before else None


def _drop_certificates(identity: Identity) -> list[str]:
    before = [s for s in (identity.cert_serial, identity.previous_cert_serial) if s]
    identity.cert_serial = None
    identity.previous_cert_serial = None
    identity.cert_key_fp = None
    identity.previous_cert_key_fp = None
    return before


def _enabled_change(before: bool, after: bool) -> dict[str, Any]:
    return {"before": {"enabled": before}, "after": {"enabled": after}}
