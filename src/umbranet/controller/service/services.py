"""Use cases for services: define who may dial and bind a service, list them, delete one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from umbranet.controller.service.errors import Conflict, NotFound
from umbranet.controller.service.policy import inventory_of
from umbranet.controller.service.validation import (
    check_attributes,
    check_host_address,
    check_intercepts,
    check_name,
)
from umbranet.controller.store import Conflict as StoreConflict
from umbranet.controller.store import Service, Store
from umbranet.policy import PolicyError, compile_policy

__all__ = ["create_service", "delete_service", "get_service", "list_services"]


def create_service(
    store: Store,
    *,
    name: str,
    dial_attributes: Iterable[str] = (),
    bind_attributes: Iterable[str] = (),
    host_address: str | None = None,
    intercepts: Sequence[dict[str, Any]] = (),
    actor: str,
    now: datetime,
) -> Service:
    service = Service(
        name=check_name(name),
        dial_attributes=check_attributes(dial_attributes),
        bind_attributes=check_attributes(bind_attributes),
        host_address=check_host_address(host_address),
        intercepts=check_intercepts(intercepts),
        created_at=now,
    )
    if store.service_by_name(name) is not None:
        raise Conflict("name_taken", f"a service named {name!r} already exists")
    try:
        store.add(service)
    except StoreConflict as exc:
        raise Conflict("name_taken", f"a service named {name!r} already exists") from exc
    store.audit(
        now,
        actor,
        "service.create",
        name,
        {
            "dial_attributes": service.dial_attributes,
            "bind_attributes": service.bind_attributes,
            "host_address": service.host_address,
            "intercepts": service.intercepts,
        },
    )
    return service


def get_service(store: Store, name: str) -> Service:
    service = store.service_by_name(name)
    if service is None:
        raise NotFound("unknown_service", f"no service named {name!r}")
    return service


def list_services(store: Store) -> Sequence[Service]:
    return store.services()


def delete_service(store: Store, name: str, *, actor: str, now: datetime) -> None:
    """Delete a service; refused (``service_in_policy``) while the policy in force names it.

    Deleting it anyway would leave a policy that no longer compiles, and a policy that does
    not compile denies everything: one deletion would cut off the whole network.
    """
    row = get_service(store, name)
    before = {
        "dial_attributes": row.dial_attributes,
        "bind_attributes": row.bind_attributes,
        "host_address": row.host_address,
        "intercepts": row.intercepts,
    }
    current = store.policy_current()
    if current is not None:
        inventory = inventory_of(store)
        inventory.remove_service(name)
        try:
            compile_policy(current.text, inventory, run_tests=False)
        except PolicyError as exc:
            raise Conflict(
                "service_in_policy",
                f"policy version {current.version} needs service {name!r} ({exc}); "
                "change the policy first, then delete the service",
            ) from exc
    store.delete(row)
    store.audit(now, actor, "service.delete", name, {"before": before, "after": None})
