"""What the Workload API hands out, in its wire shapes, and the JWT-SVID cache behind it.

`X509Material` is one immutable snapshot of the agent's X.509-SVID as the Workload API
sends it: the chain as concatenated DER, the private key as PKCS#8 DER, the trust domain's
CA certificates as concatenated DER. A snapshot is built once per certificate and shared
by every stream, so a rotation is one object swap.

`JwtSvidCache` keeps JWT-SVIDs per audience set until half their lifetime has passed:
a workload asking for a token on every request must not cost a controller round trip each
time, and a token handed out is always good for at least half its lifetime. Concurrent
requests for the same audience share one fetch. No IO and no clock reads here: the fetch
function and the clock are injected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from umbranet.client.controller import JwtSvidGrant
from umbranet.pki import IdentityFile, key_from_pem

__all__ = ["JwtSvidCache", "X509Material", "x509_material"]

MAX_CACHED_AUDIENCES = 256
"""Bound on distinct audience sets held; beyond it the entries closest to expiry go first."""


@dataclass(frozen=True, slots=True)
class X509Material:
    """One X.509-SVID with its key and bundle, encoded as the Workload API sends them."""

    spiffe_id: str
    trust_domain: str
    chain_der: bytes
    key_der: bytes
    bundle_der: bytes
    not_after: datetime

    def __repr__(self) -> str:  # never show the key, even in a traceback
        return f"X509Material({self.spiffe_id!r}, not_after={self.not_after.isoformat()})"


def x509_material(identity: IdentityFile) -> X509Material:
    """The Workload API's view of `identity`: leaf DER, PKCS#8 key DER, CA DER bundle."""
    certificate = identity.certificate
    key = key_from_pem(identity.key_pem)
    key_der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cas = x509.load_pem_x509_certificates(identity.bundle.ca_pem.encode("ascii"))
    return X509Material(
        spiffe_id=identity.spiffe_id,
        trust_domain=identity.bundle.trust_domain,
        chain_der=certificate.public_bytes(serialization.Encoding.DER),
        key_der=key_der,
        bundle_der=b"".join(ca.public_bytes(serialization.Encoding.DER) for ca in cas),
        not_after=certificate.not_valid_after_utc,
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    grant: JwtSvidGrant
    fresh_until: datetime


class JwtSvidCache:
    """JWT-SVIDs by audience set, each reused until half its lifetime has passed."""

    def __init__(
        self,
        fetch: Callable[[tuple[str, ...]], Awaitable[JwtSvidGrant]],
        clock: Callable[[], datetime],
        max_entries: int = MAX_CACHED_AUDIENCES,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[frozenset[str], _Entry] = {}
        self._pending: dict[frozenset[str], asyncio.Future[JwtSvidGrant]] = {}
        self.fetches = 0

    async def get(self, audience: Iterable[str]) -> JwtSvidGrant:
        """A JWT-SVID for `audience` (its order does not matter; duplicates are merged)."""
        key = frozenset(audience)
        if not key:
            raise ValueError("a JWT-SVID needs at least one audience")
        entry = self._entries.get(key)
        if entry is not None and self._clock() < entry.fresh_until:
            return entry.grant
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._refill(key))
            self._pending[key] = pending
            pending.add_done_callback(lambda _f: self._pending.pop(key, None))
        # Shielded: one caller giving up must not cancel the fetch the others wait for.
        return await asyncio.shield(pending)

    def __len__(self) -> int:
        return len(self._entries)

    async def _refill(self, key: frozenset[str]) -> JwtSvidGrant:
        fetched_at = self._clock()
        grant = await self._fetch(tuple(sorted(key)))
        self.fetches += 1
        self._entries[key] = _Entry(grant, fetched_at + (grant.expires_at - fetched_at) / 2)
        self._evict()
        return grant

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, e in self._entries.items() if e.fresh_until <= now]:
            del self._entries[key]
        while len(self._entries) > self._max_entries:
            oldest = min(self._entries, key=lambda k: self._entries[k].fresh_until)
            del self._entries[oldest]
