"""Admin calls that change what exists: identity attributes and deletion, service updates,
router deletion and router tokens (the routes in `controller.api.routes_manage`).

Functions over a `ControllerClient` rather than more methods on it, so the client's module
stays the one place for the calls every endpoint makes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from umbranet.client.calls import segment as _seg
from umbranet.client.controller import ControllerClient
from umbranet.client.models import (
    IdentityInfo,
    Intercept,
    ServiceInfo,
    parse,
)
from umbranet.schema import EnrollmentTokenOut

__all__ = [
    "delete_identity",
    "delete_router",
    "router_token",
    "update_identity",
    "update_service",
]


async def update_identity(
    client: ControllerClient,
    name: str,
    *,
    attributes: Iterable[str] | None = None,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
) -> IdentityInfo:
    body: dict[str, Any] = {"add_attributes": list(add), "remove_attributes": list(remove)}
    if attributes is not None:
        body["attributes"] = list(attributes)
    data = await client._call("PATCH", f"/v1/identities/{_seg(name)}", json=body)
    return parse(IdentityInfo, data)


async def delete_identity(client: ControllerClient, name: str) -> None:
    await client._call("DELETE", f"/v1/identities/{_seg(name)}")


async def update_service(
    client: ControllerClient,
    name: str,
    *,
    dial_attributes: Iterable[str] | None = None,
    bind_attributes: Iterable[str] | None = None,
    host_address: str | None = None,
    clear_host_address: bool = False,
    intercepts: Iterable[Intercept] | None = None,
) -> ServiceInfo:
    body: dict[str, Any] = {"clear_host_address": clear_host_address}
    if dial_attributes is not None:
        body["dial_attributes"] = list(dial_attributes)
    if bind_attributes is not None:
        body["bind_attributes"] = list(bind_attributes)
    if host_address is not None:
        body["host_address"] = host_address
    if intercepts is not None:
        body["intercepts"] = [{"host": i.host, "port": i.port} for i in intercepts]
    return parse(ServiceInfo, await client._call("PATCH", f"/v1/services/{_seg(name)}", json=body))


async def delete_router(client: ControllerClient, name: str) -> None:
    await client._call("DELETE", f"/v1/routers/{_seg(name)}")


async def router_token(client: ControllerClient, name: str) -> str:
    data = await client._call("POST", f"/v1/routers/{_seg(name)}/enrollments")
    return parse(EnrollmentTokenOut, data).enrollment_token
