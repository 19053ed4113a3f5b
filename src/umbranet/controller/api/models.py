"""Request and response bodies of the controller API (pydantic 2), as OpenAPI shows them.

Inputs forbid unknown fields and bound every string and list, so a hostile body cannot make
the controller hold more than a few kilobytes per request.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BundleOut",
    "EnrollIn",
    "EnrollOut",
    "EnrollmentTokenOut",
    "ErrorBody",
    "ErrorDetail",
    "IdentityCreatedOut",
    "IdentityIn",
    "IdentityOut",
    "JwkOut",
    "JwksOut",
    "JwtSvidIn",
    "JwtSvidOut",
    "Intercept",
    "MeOut",
    "MetricsOut",
    "PeerKeyOut",
    "PostureIn",
    "PostureOut",
    "ViewOut",
    "RenewIn",
    "RenewOut",
    "RouterAddressOut",
    "RouterCreatedOut",
    "RouterIn",
    "RouterOut",
    "RouterSelfIn",
    "ServiceActionsOut",
    "ServiceIn",
    "ServiceOut",
    "TicketIn",
    "TicketOut",
]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error response: a stable machine code and a human message."""

    error: ErrorDetail


class BundleOut(BaseModel):
    trust_domain: str
    ca_pem: str
    ticket_keys: dict[str, str]


class EnrollIn(_In):
    token: str = Field(max_length=4096)
    csr_pem: str = Field(max_length=16384)
    noise_public_key: str = Field(max_length=128, description="base64 of the raw X25519 key")
    noise_challenge: str = Field(max_length=64, description="from GET /v1/noise-challenge")
    noise_proof: str = Field(max_length=64, description="proof of the Noise private key")


class EnrollOut(BaseModel):
    name: str
    spiffe_id: str
    cert_pem: str
    bundle: BundleOut


class RenewIn(_In):
    csr_pem: str = Field(max_length=16384)
    noise_challenge: str = Field(max_length=64, description="from GET /v1/noise-challenge")
    noise_proof: str = Field(max_length=64, description="proof of the Noise private key")


class NoiseChallengeOut(BaseModel):
    challenge: str
    public_key: str


class RenewOut(BaseModel):
    cert_pem: str
    bundle_updates: list[str] = Field(
        default_factory=list, description="the current bundle, signed by each ticket key held"
    )


class BundleUpdatesOut(BaseModel):
    version: int
    updates: list[str]


class ServiceActionsOut(BaseModel):
    name: str
    actions: list[str]
    # Present only when set: the agent intercepts these names; a host forwards to the address
    # (shown only to identities that may bind the service).
    host_address: str | None = None
    intercepts: list[Intercept] | None = None


class MeOut(BaseModel):
    name: str
    kind: str
    spiffe_id: str
    attributes: list[str]
    services: list[ServiceActionsOut]
    ipv4: str | None = Field(default=None, description="overlay IPv4 (network mode)")
    ipv6: str | None = Field(default=None, description="overlay IPv6 (network mode)")


class TicketIn(_In):
    service: str = Field(max_length=255)
    action: Literal["dial", "bind"]
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Dial only: the service port to reach."
    )


class RouterAddressOut(BaseModel):
    name: str
    spiffe_id: str
    address: str


class TicketOut(BaseModel):
    ticket: str
    expires_at: datetime
    routers: list[RouterAddressOut]
    http_rules: dict[str, Any] | None = Field(
        default=None,
        description="Bind grants only: the HTTP rules the host checks each request against.",
    )


ProcessName = Annotated[str, Field(min_length=1, max_length=64)]


class PostureIn(_In):
    """What an endpoint reports about itself; omitted fields are unknown to policy."""

    os: str | None = Field(default=None, max_length=64)
    os_version: str | None = Field(default=None, max_length=64)
    sdk_version: str | None = Field(default=None, max_length=64)
    processes: list[ProcessName] | None = Field(default=None, max_length=8192)


class PostureOut(BaseModel):
    changed: bool
    rechecked: bool
    epoch: int


class PeerKeyOut(BaseModel):
    name: str
    spiffe_id: str
    noise_public_key: str | None
    ipv4: str | None = None
    ipv6: str | None = None
    endpoint: str | None = Field(default=None, description="its WireGuard UDP host:port")
    reach: list[str] = Field(
        default_factory=list, description="what it may open towards the caller: tcp/PORT, udp/PORT"
    )
    relay_ticket: str | None = Field(
        default=None,
        description="a ticket letting routers relay the caller's WireGuard datagrams to this peer",
    )


class EndpointIn(_In):
    """Where the caller's WireGuard device listens; without ``host``, the address the
    controller sees the request come from."""

    port: int = Field(ge=1, le=65535)
    host: str | None = Field(default=None, max_length=64)


class EndpointOut(BaseModel):
    endpoint: str


class ViewOut(BaseModel):
    """What the caller may reach and the peers whose keys it needs; nothing else."""

    services: dict[str, list[str]]
    peers: list[PeerKeyOut]
    http: dict[str, dict[str, Any]]


class RouterOut(BaseModel):
    name: str
    spiffe_id: str
    address: str | None
    last_seen: datetime | None = None


class RouterSelfIn(_In):
    address: str = Field(max_length=255, description="host:port where endpoints reach it")


class RouterIn(_In):
    name: str = Field(max_length=255)


class RouterCreatedOut(BaseModel):
    router: RouterOut
    enrollment_token: str


class IdentityIn(_In):
    name: str = Field(max_length=255)
    kind: Literal["device", "workload", "admin"] = "device"
    attributes: list[str] = Field(default_factory=list, max_length=64)


class IdentityOut(BaseModel):
    name: str
    kind: str
    spiffe_id: str
    attributes: list[str]
    enabled: bool
    enrolled: bool
    cert_not_after: datetime | None
    created_at: datetime


class IdentityCreatedOut(BaseModel):
    identity: IdentityOut
    enrollment_token: str


class EnrollmentTokenOut(BaseModel):
    enrollment_token: str


class Intercept(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(max_length=253)
    port: int


class ServiceIn(_In):
    name: str = Field(max_length=255)
    dial_attributes: list[str] = Field(default_factory=list, max_length=64)
    bind_attributes: list[str] = Field(default_factory=list, max_length=64)
    host_address: str | None = Field(default=None, max_length=300)
    intercepts: list[Intercept] = Field(default_factory=list, max_length=64)


class ServiceOut(BaseModel):
    name: str
    dial_attributes: list[str]
    bind_attributes: list[str]
    host_address: str | None
    intercepts: list[Intercept]
    created_at: datetime


class MetricsOut(BaseModel):
    counters: dict[str, int]


Audience = Annotated[str, Field(min_length=1, max_length=256)]


class JwtSvidIn(_In):
    audience: list[Audience] = Field(min_length=1, max_length=16)


class JwtSvidOut(BaseModel):
    token: str
    expires_at: datetime


class JwkOut(BaseModel):
    kty: str
    crv: str
    x: str
    y: str
    kid: str
    use: str


class JwksOut(BaseModel):
    """The JWT-SVID authorities of the trust domain, as a JWKS (SPIFFE ``use: jwt-svid``)."""

    keys: list[JwkOut]
