"""Management use cases that change what already exists: identity attributes and deletion,
service updates, router deletion and new router tokens.

Every change is audited in its own transaction with a before/after detail. Callers bump the
epoch afterwards: attributes decide access, and the controller's cached views are keyed by the
epoch, so a change takes effect on live circuits and views at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from umbranet.controller.service.authority import Authority
from umbranet.controller.service.errors import BadRequest, NotFound
from umbranet.controller.service.identities import get_identity, new_enrollment
from umbranet.controller.service.services import get_service
from umbranet.controller.service.validation import (
    check_attributes,
    check_host_address,
    check_intercepts,
)
from umbranet.controller.store import Identity, Router, Service, Store

__all__ = [
    "delete_identity",
    "delete_router",
    "router_token",
    "update_identity",
    "update_service",
]


def update_identity(
    store: Store,
    name: str,
    *,
    attributes: Iterable[str] | None = None,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
    actor: str,
    now: datetime,
) -> Identity:
    """Replace the attributes (`attributes`), or add and remove some."""
    identity = get_identity(store, name)
    before = list(identity.attributes)
    current = list(attributes) if attributes is not None else list(before)
    dropped = set(remove)
    current = [a for a in current if a not in dropped]
    current += [a for a in add if a not in current]
    identity.attributes = check_attributes(current)
    store.audit(now, actor, "identity.update", name, {"before": before, "after": current})
    return identity


def delete_identity(store: Store, name: str, *, actor: str, now: datetime) -> None:
    """Delete a device or workload identity (admins and routers are deleted their own way)."""
    identity = get_identity(store, name)
    if identity.kind == "admin":
        raise BadRequest("cannot_delete_admin", "the admin identity cannot be deleted")
    if identity.kind == "router":
        raise BadRequest("is_a_router", f"{name!r} is a router: use `umbra router delete {name}`")
    store.audit(
        now,
        actor,
        "identity.delete",
        name,
        {"kind": identity.kind, "attributes": identity.attributes},
    )
    store.delete(identity)


def update_service(
    store: Store,
    name: str,
    *,
    dial_attributes: Iterable[str] | None = None,
    bind_attributes: Iterable[str] | None = None,
    host_address: str | None = None,
    clear_host_address: bool = False,
    intercepts: Sequence[dict[str, Any]] | None = None,
    actor: str,
    now: datetime,
) -> Service:
    """Change the given fields of a service; the others stay."""
    service = get_service(store, name)
    before = _service_fields(service)
    if dial_attributes is not None:
        service.dial_attributes = check_attributes(dial_attributes)
    if bind_attributes is not None:
        service.bind_attributes = check_attributes(bind_attributes)
    if clear_host_address:
        service.host_address = None
    elif host_address is not None:
        service.host_address = check_host_address(host_address)
    if intercepts is not None:
        service.intercepts = check_intercepts(intercepts)
    store.audit(
        now, actor, "service.update", name, {"before": before, "after": _service_fields(service)}
    )
    return service


def delete_router(store: Store, name: str, *, actor: str, now: datetime) -> None:
    """Delete a router and its identity: its certificate is refused from now on."""
    router = _router(store, name)
    store.audit(now, actor, "router.delete", name, {"address": router.address})
    identity = router.identity
    store.delete(router)
    store.delete(identity)


def router_token(
    store: Store, authority: Authority, name: str, *, actor: str, now: datetime
) -> tuple[str, list[str] | None]:
    """A new enrollment token for a router (a rebuilt machine, a lost key); like any new
    token it revokes the old certificates (their key fingerprints are returned, or None)."""
    router = _router(store, name)
    return new_enrollment(store, authority, router.identity.name, actor=actor, now=now)


def _router(store: Store, name: str) -> Router:
    router = store.router_by_name(name)
    if router is None:
        raise NotFound("unknown_router", f"no router named {name!r}")
    return router


def _service_fields(service: Service) -> dict[str, Any]:
    return {
        "dial_attributes": list(service.dial_attributes),
        "bind_attributes": list(service.bind_attributes),
        "host_address": service.host_address,
        "intercepts": list(service.intercepts),
    }
