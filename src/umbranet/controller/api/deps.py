"""Route dependencies: who is calling (from the TLS client certificate) and may they.

The TLS layer asks for a client certificate but does not require one (public routes must
work without), and passes the DER it got in ``scope["extensions"]["tls"]["client_cert_der"]``.
Here, per route, that certificate is verified as an X.509-SVID against the bundle at request
time (`now` from the injected clock) and matched to an enabled identity whose current or
previous certificate it is.

Refusals: 401 ``client_cert_required`` / ``cert_*`` / ``unknown_identity`` /
``cert_superseded`` / ``cert_revoked``; 403 ``identity_disabled`` / ``admin_required`` /
``router_required``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from cryptography import x509
from fastapi import Depends, Request

from umbranet.controller.api.context import AppContext
from umbranet.controller.service import Forbidden, Unauthenticated
from umbranet.controller.service.certificates import serial_text
from umbranet.pki import PkiError, VerifiedPeer, verify_svid

__all__ = [
    "AdminCaller",
    "ClientCaller",
    "Ctx",
    "Principal",
    "RouterCaller",
    "get_context",
    "peer_certificate_der",
]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: a snapshot of its identity row at authentication time."""

    id: int
    name: str
    kind: str
    spiffe_id: str


def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.umbra
    return context


Ctx = Annotated[AppContext, Depends(get_context)]


def peer_certificate_der(scope: Mapping[str, Any]) -> bytes | None:
    """The client certificate the TLS layer put in the ASGI scope, if any."""
    extensions = scope.get("extensions") or {}
    tls = extensions.get("tls") or {}
    der = tls.get("client_cert_der")
    return der if isinstance(der, bytes) and der else None


def _verified_peer(request: Request, context: AppContext) -> VerifiedPeer:
    der = peer_certificate_der(request.scope)
    if der is None:
        raise Unauthenticated("client_cert_required", "this route needs a client certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise Unauthenticated("cert_untrusted", "the client certificate cannot be parsed") from exc
    try:
        return verify_svid([cert], context.authority.bundle, context.clock())
    except PkiError as exc:
        raise Unauthenticated(exc.code, exc.reason) from exc


def _principal(request: Request, context: AppContext) -> Principal:
    peer = _verified_peer(request, context)
    spiffe_id = str(peer.spiffe_id)
    with context.transaction() as store:
        identity = store.identity_by_spiffe_id(spiffe_id)
        if identity is None:
            raise Unauthenticated("unknown_identity", f"{spiffe_id} is not a known identity")
        if not identity.enabled:
            raise Forbidden("identity_disabled", f"identity {identity.name!r} is disabled")
        serial = serial_text(peer.serial)
        if identity.cert_serial is None and identity.noise_public_key is not None:
            raise Unauthenticated(
                "cert_revoked", "this identity's certificates were revoked; enroll again"
            )
        if serial not in {identity.cert_serial, identity.previous_cert_serial}:
            raise Unauthenticated(
                "cert_superseded", "this certificate has been replaced; enroll or renew again"
            )
        return Principal(identity.id, identity.name, identity.kind, identity.spiffe_id)


def client_principal(request: Request, context: Ctx) -> Principal:
    return _principal(request, context)


def admin_principal(request: Request, context: Ctx) -> Principal:
    principal = _principal(request, context)
    if principal.kind != "admin":
        raise Forbidden("admin_required", "this route needs an admin identity")
    return principal


def router_principal(request: Request, context: Ctx) -> Principal:
    principal = _principal(request, context)
    if principal.kind != "router":
        raise Forbidden("router_required", "this route needs a router identity")
    return principal


ClientCaller = Annotated[Principal, Depends(client_principal)]
AdminCaller = Annotated[Principal, Depends(admin_principal)]
RouterCaller = Annotated[Principal, Depends(router_principal)]
