"""Use cases for routers: create one (identity + token), register its address, list them.

A router is an identity of kind ``router`` plus a row saying where endpoints reach it. It
enrolls like any identity; `register_address` is how it announces its listener.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from umbranet.controller.service.authority import Authority
from umbranet.controller.service.errors import Forbidden
from umbranet.controller.service.identities import new_identity_row
from umbranet.controller.service.tokens import mint_enrollment_token
from umbranet.controller.service.validation import check_address
from umbranet.controller.store import Identity, Router, Store

__all__ = ["create_router", "list_routers", "reachable_routers", "register_address"]


def create_router(
    store: Store, authority: Authority, name: str, *, actor: str, now: datetime
) -> tuple[Router, str]:
    identity = new_identity_row(store, authority, name=name, kind="router", attributes=(), now=now)
    router = Router(name=name, identity_id=identity.id, identity=identity)
    store.add(router)
    token = mint_enrollment_token(store, authority, identity, now)
    store.audit(now, actor, "router.create", name, {})
    return router, token


def register_address(store: Store, identity: Identity, address: str, now: datetime) -> Router:
    """Record where the router `identity` listens; only routers may call this."""
    if identity.kind != "router":
        raise Forbidden("router_required", "only a router identity may register an address")
    router = store.router_by_identity(identity.id)
    if router is None:
        raise Forbidden("router_required", f"{identity.name!r} has no router record")
    router.address = check_address(address)
    router.last_seen = now
    return router


def list_routers(store: Store) -> Sequence[Router]:
    return store.routers()


def reachable_routers(store: Store) -> list[Router]:
    """Routers with a registered address whose identity is enabled: what endpoints may use."""
    return [r for r in store.routers() if r.address is not None and r.identity.enabled]
