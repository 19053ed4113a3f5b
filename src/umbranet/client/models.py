"""What the controller client returns: plain dataclasses, and their parsing from API JSON.

Kept apart from `controller_client` (the HTTP calls) so each file stays small; the client
module re-exports the dataclasses, which are part of its API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "CreatedIdentity",
    "CreatedRouter",
    "IdentityInfo",
    "Intercept",
    "JwtSvidGrant",
    "MeInfo",
    "RouterAddress",
    "RouterInfo",
    "ServiceAccess",
    "ServiceInfo",
    "TicketGrant",
    "identity_info",
    "opt_time",
    "parse_time",
    "router_info",
    "service_access",
    "service_info",
]


@dataclass(frozen=True, slots=True)
class IdentityInfo:
    name: str
    kind: str
    spiffe_id: str
    attributes: list[str]
    enabled: bool
    enrolled: bool
    cert_not_after: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CreatedIdentity:
    identity: IdentityInfo
    enrollment_token: str


@dataclass(frozen=True, slots=True)
class Intercept:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    name: str
    dial_attributes: list[str]
    bind_attributes: list[str]
    host_address: str | None
    intercepts: list[Intercept]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RouterInfo:
    name: str
    spiffe_id: str
    address: str | None
    last_seen: datetime | None


@dataclass(frozen=True, slots=True)
class CreatedRouter:
    router: RouterInfo
    enrollment_token: str


@dataclass(frozen=True, slots=True)
class RouterAddress:
    name: str
    spiffe_id: str
    address: str


@dataclass(frozen=True, slots=True)
class TicketGrant:
    """A signed session ticket and the routers to present it to."""

    ticket: str
    expires_at: datetime
    routers: list[RouterAddress]
    http_rules: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ServiceAccess:
    """A service this identity may use: its actions, intercepts and (to hosts) host address."""

    name: str
    actions: list[str]
    host_address: str | None = None
    intercepts: list[Intercept] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class JwtSvidGrant:
    """A JWT-SVID from the controller (a bearer token: never log it)."""

    token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class MeInfo:
    name: str
    kind: str
    spiffe_id: str
    attributes: list[str]
    services: list[ServiceAccess] = field(default_factory=list)
    ipv4: str | None = None  # overlay addresses (network mode); None from older controllers
    ipv6: str | None = None


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def opt_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def identity_info(data: Mapping[str, Any]) -> IdentityInfo:
    return IdentityInfo(
        name=data["name"],
        kind=data["kind"],
        spiffe_id=data["spiffe_id"],
        attributes=list(data["attributes"]),
        enabled=bool(data["enabled"]),
        enrolled=bool(data["enrolled"]),
        cert_not_after=opt_time(data.get("cert_not_after")),
        created_at=parse_time(data["created_at"]),
    )


def service_info(data: Mapping[str, Any]) -> ServiceInfo:
    return ServiceInfo(
        name=data["name"],
        dial_attributes=list(data["dial_attributes"]),
        bind_attributes=list(data["bind_attributes"]),
        host_address=data.get("host_address"),
        intercepts=[Intercept(i["host"], int(i["port"])) for i in data["intercepts"]],
        created_at=parse_time(data["created_at"]),
    )


def service_access(data: Mapping[str, Any]) -> ServiceAccess:
    return ServiceAccess(
        name=data["name"],
        actions=list(data["actions"]),
        host_address=data.get("host_address"),
        intercepts=[Intercept(i["host"], int(i["port"])) for i in data.get("intercepts") or []],
    )


def router_info(data: Mapping[str, Any]) -> RouterInfo:
    return RouterInfo(
        name=data["name"],
        spiffe_id=data["spiffe_id"],
        address=data.get("address"),
        last_seen=opt_time(data.get("last_seen")),
    )
