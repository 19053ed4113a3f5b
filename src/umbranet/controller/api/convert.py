"""ORM rows and PKI objects to response models: the only place the two shapes meet."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from umbranet.controller.store import Identity, Router, Service
from umbranet.pki import TrustBundle
from umbranet.schema import (
    BundleOut,
    IdentityOut,
    Intercept,
    RouterOut,
    ServiceOut,
)

__all__ = ["bundle_out", "cert_pem", "identity_out", "router_out", "service_out"]


def bundle_out(bundle: TrustBundle) -> BundleOut:
    return BundleOut.model_validate(bundle.to_dict())


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def identity_out(identity: Identity) -> IdentityOut:
    return IdentityOut(
        name=identity.name,
        kind=identity.kind,
        spiffe_id=identity.spiffe_id,
        attributes=list(identity.attributes),
        enabled=identity.enabled,
        enrolled=identity.cert_serial is not None,
        cert_not_after=identity.cert_not_after,
        created_at=identity.created_at,
    )


def service_out(service: Service) -> ServiceOut:
    return ServiceOut(
        name=service.name,
        dial_attributes=list(service.dial_attributes),
        bind_attributes=list(service.bind_attributes),
        host_address=service.host_address,
        intercepts=[Intercept.model_validate(i) for i in service.intercepts],
        created_at=service.created_at,
    )


def router_out(router: Router) -> RouterOut:
    return RouterOut(
        name=router.name,
        spiffe_id=router.identity.spiffe_id,
        address=router.address,
        last_seen=router.last_seen,
    )
