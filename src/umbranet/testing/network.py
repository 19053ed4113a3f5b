"""LocalNetwork: a CA, a ticket signer and services in memory, standing in for the controller.

It issues identity files and tickets exactly as the controller would (same pki calls, same
attribute decision), so router and SDK tests run in one process, with real TLS sockets but
without HTTP. `LocalControlPlane` is the in-memory twin of the SDK's controller client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from umbranet.pki import (
    CertificateAuthority,
    IdentityFile,
    Signer,
    SpiffeId,
    TrustBundle,
    generate_noise_keypair,
    generate_tls_key,
    key_to_pem,
    make_csr,
)
from umbranet.pki.tickets import Action
from umbranet.policy.attributes import decide_access
from umbranet.sdk.errors import UmbraError
from umbranet.sdk.grants import Grant


@dataclass(frozen=True, slots=True)
class ServiceRule:
    """A service and the attributes that may dial and bind it."""

    name: str
    dial_attributes: tuple[str, ...] = ()
    bind_attributes: tuple[str, ...] = ()


@dataclass
class LocalNetwork:
    """An in-memory authority: CA, signer, services, identities' attributes, routers."""

    trust_domain: str = "test.umbra"
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    ticket_lifetime: timedelta = timedelta(minutes=10)
    routers: list[str] = field(default_factory=list)
    services: dict[str, ServiceRule] = field(default_factory=dict)
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)
    epoch: int = 1
    subscribers: list[asyncio.Queue[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ca = CertificateAuthority.create(self.trust_domain, self.now)
        self.signer = Signer.generate()
        self.bundle = TrustBundle.from_certificates(
            self.trust_domain, [self.ca.certificate], [self.signer.public_key]
        )

    def identity(
        self,
        name: str,
        kind: str = "workload",
        attributes: tuple[str, ...] = (),
        lifetime: timedelta = timedelta(hours=24),
        now: datetime | None = None,
    ) -> IdentityFile:
        """Enroll an identity locally: key pair, CSR, SVID with its noise key."""
        spiffe_id = SpiffeId.for_identity(self.trust_domain, kind, name)
        key = generate_tls_key()
        noise_private, noise_public = generate_noise_keypair()
        cert = self.ca.issue_svid(make_csr(key), spiffe_id, noise_public, now or self.now, lifetime)
        self.attributes[str(spiffe_id)] = attributes
        return IdentityFile(
            name=name,
            spiffe_id=str(spiffe_id),
            key_pem=key_to_pem(key),
            cert_pem=cert.public_bytes(Encoding.PEM),
            bundle=self.bundle,
            controller_url="https://127.0.0.1:1",
            noise_private_key=noise_private,
        )

    def service(self, name: str, dial: tuple[str, ...] = (), bind: tuple[str, ...] = ()) -> None:
        self.services[name] = ServiceRule(name, dial, bind)

    def grant(self, identity: IdentityFile, service: str, action: str) -> Grant:
        """A ticket as the controller would issue it, or UmbraError with the same codes."""
        if identity.spiffe_id in self.disabled:
            raise UmbraError("identity_disabled", f"{identity.name} is disabled")
        rule = self.services.get(service)
        if rule is None:
            raise UmbraError("unknown_service", f"no service named {service!r}")
        verdict = decide_access(self.attributes.get(identity.spiffe_id, ()), rule, action)
        if not verdict.allowed:
            raise UmbraError("not_authorized", verdict.reason)
        ticket, token = self.signer.sign_ticket(
            identity.spiffe_id,
            service,
            Action(action),
            datetime.now(UTC),
            self.ticket_lifetime,
            # As the controller: a bind ticket, shown to every dialer, names no attributes.
            attributes=self.attributes.get(identity.spiffe_id, ()) if action == "dial" else (),
            epoch=self.epoch,
        )
        return Grant(token, ticket.expires_at, tuple(self.routers))

    def bump(self) -> int:
        """Start a new revocation epoch and push it to every control plane's subscribers."""
        self.epoch += 1
        for queue in self.subscribers:
            queue.put_nowait(self.epoch)
        return self.epoch

    def rotate_ticket_key(self) -> Signer:
        """A new ticket-signing key: the bundle trusts both (a new version), new tickets are
        signed with the new one, and holders hear of it with the next epoch."""
        self.signer = Signer.generate()
        bundle = self.bundle.with_ticket_key(self.signer.public_key)
        self.bundle = replace(bundle, version=bundle.version + 1)
        self.bump()
        return self.signer

    def control(self, identity: IdentityFile) -> LocalControlPlane:
        return LocalControlPlane(self, identity)


class LocalControlPlane:
    """The SDK's `ControlPlane`, answered from a LocalNetwork."""

    def __init__(self, network: LocalNetwork, identity: IdentityFile) -> None:
        self.network = network
        self.identity = identity
        self.renewals = 0
        self.posture: dict[str, Any] | None = None

    async def grant(self, service: str, action: str, port: int | None = None) -> Grant:
        """The in-memory network grants by attributes; it knows no ports."""
        return self.network.grant(self.identity, service, action)

    async def report_posture(self, report: dict[str, Any]) -> bool:
        """Kept for tests to look at; the in-memory network has no posture rules."""
        self.posture = report
        return False

    async def renew(self) -> IdentityFile:
        """A fresh key and certificate for the same identity and the same noise key."""
        key = generate_tls_key()
        cert = self.network.ca.issue_svid(
            make_csr(key),
            self.identity.spiffe_id,
            self.identity.noise_public_key,
            datetime.now(UTC),
        )
        self.identity = replace(
            self.identity, key_pem=key_to_pem(key), cert_pem=cert.public_bytes(Encoding.PEM)
        )
        self.renewals += 1
        return self.identity

    async def refresh_bundle(self) -> IdentityFile | None:
        """The network's bundle, when it is newer than ours (after `LocalNetwork.rotate`)."""
        if self.network.bundle.version <= self.identity.bundle.version:
            return None
        self.identity = self.identity.with_bundle(self.network.bundle)
        return self.identity

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Epochs pushed by `LocalNetwork.bump`, after a `hello`; each names the bundle's
        version, as the controller's events do."""
        queue: asyncio.Queue[int] = asyncio.Queue()
        self.network.subscribers.append(queue)
        try:
            version = self.network.bundle.version
            yield "hello", {"epoch": self.network.epoch, "bundle_version": version}
            while True:
                epoch = await queue.get()
                yield "epoch", {"epoch": epoch, "bundle_version": self.network.bundle.version}
        finally:
            self.network.subscribers.remove(queue)

    async def aclose(self) -> None:
        return None
