"""Overlay addresses at the controller (network mode): assigned once, stored, served.

Every identity gets a stable IPv4 from the overlay range (100.64.0.0/10 unless configured)
and an IPv6 from the network's ULA prefix (derived from the trust domain), chosen by
`policy.addressing.AddressAllocator` from the identity's SPIFFE ID the first time anyone asks
(``/v1/me``, ``/v1/view``), then read back from ``overlay_addresses``. Why lazily: identities
that never use network mode cost nothing, and the common path is one indexed read.

Why the allocator is rebuilt from the table when something is missing: the table is the truth
shared by every controller replica; a row another replica wrote a moment ago must count as
taken. The table's unique columns catch the one race left (two replicas choosing the same
free address at once): the loser's insert fails and it tries again with the winner's row in
the allocator.

Each identity also stores the UDP endpoint (``host:port``) its WireGuard device listens at,
which peers allowed to talk to it receive in their view. NAT traversal will replace this
with discovered candidates; a published endpoint stays the simple case.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from umbranet.controller.service.errors import BadRequest
from umbranet.controller.store import Identity, Store
from umbranet.controller.store.overlay_models import OverlayAddress
from umbranet.policy.addressing import (
    DEFAULT_IPV4_RANGE,
    AddressAllocator,
    AddressingUsageError,
    AddressPoolExhausted,
    ula_prefix,
)

__all__ = ["OverlaySettings", "Overlay", "addresses_for", "parse_endpoint", "set_endpoint"]

_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class OverlaySettings:
    """Where overlay addresses come from; ``ipv6_prefix`` None means the trust domain's ULA."""

    ipv4_range: str = DEFAULT_IPV4_RANGE
    ipv6_prefix: str | None = None

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> OverlaySettings:
        """The optional ``overlay_ipv4_range`` / ``overlay_ipv6_prefix`` keys of the
        controller's config.json; AddressingUsageError if they do not make a valid pool."""
        v4 = data.get("overlay_ipv4_range", DEFAULT_IPV4_RANGE)
        v6 = data.get("overlay_ipv6_prefix")
        if not isinstance(v4, str) or not (v6 is None or isinstance(v6, str)):
            raise AddressingUsageError("overlay ranges in config.json must be strings")
        settings = cls(v4, v6)
        settings.allocator("check")  # fails now, at start, rather than at the first request
        return settings

    def allocator(self, trust_domain: str) -> AddressAllocator:
        prefix = self.ipv6_prefix or str(ula_prefix(trust_domain))
        return AddressAllocator(ipv4_range=self.ipv4_range, ipv6_prefix=prefix)


@dataclass(frozen=True, slots=True)
class Overlay:
    """One identity's overlay addresses and its published WireGuard endpoint (if any)."""

    ipv4: str
    ipv6: str
    endpoint: str | None


def addresses_for(
    store: Store,
    identities: Iterable[Identity],
    settings: OverlaySettings,
    trust_domain: str,
) -> dict[int, Overlay]:
    """Each identity's overlay addresses by identity id, assigning (and storing) missing ones.

    BadRequest ``address_pool_exhausted`` when the range is full (the admin must widen it).
    """
    wanted = {row.id: row for row in identities}
    found = _rows(store, wanted)
    for _attempt in range(_ATTEMPTS):
        missing = [wanted[i] for i in sorted(set(wanted) - set(found))]
        if not missing:
            break
        allocator = settings.allocator(trust_domain)
        owners = store.session.execute(
            sa.select(Identity.spiffe_id, OverlayAddress.ipv4, OverlayAddress.ipv6).join(
                Identity, Identity.id == OverlayAddress.identity_id
            )
        ).all()
        for spiffe_id, ipv4, ipv6 in owners:
            # A row outside today's ranges (the admin changed them) is left as it was.
            if _inside(allocator, ipv4, ipv6):
                allocator.restore(spiffe_id, ipv4, ipv6)
        try:
            with store.session.begin_nested():
                for row in missing:
                    chosen = allocator.assign(row.spiffe_id)
                    store.session.add(
                        OverlayAddress(
                            identity_id=row.id, ipv4=str(chosen.ipv4), ipv6=str(chosen.ipv6)
                        )
                    )
                store.session.flush()
        except AddressPoolExhausted as exc:
            raise BadRequest(AddressPoolExhausted.code, str(exc)) from None
        except IntegrityError:
            pass  # another replica took one of those addresses first: read and try again
        found = _rows(store, wanted)
    return {i: Overlay(row.ipv4, row.ipv6, row.endpoint) for i, row in found.items() if i in wanted}


def set_endpoint(
    store: Store, identity: Identity, endpoint: str | None, *, now: datetime
) -> str | None:
    """Record (or, with None, forget) where this identity's WireGuard device listens."""
    row = store.session.get(OverlayAddress, identity.id)
    if row is None:
        raise BadRequest("no_overlay_address", "the identity has no overlay address yet")
    if row.endpoint != endpoint:  # an agent re-announcing the same port writes nothing
        row.endpoint = endpoint
        row.endpoint_at = now
    return endpoint


def parse_endpoint(host: str, port: int) -> str:
    """``host:port`` (``[v6]:port``) from an IP literal and a port; BadRequest otherwise.

    Only IP literals: the data plane resolves no names, and a name would let one identity
    point its peers' handshakes at a host of its choosing through DNS later.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        message = f"endpoint host {host!r} is not an IP address"
        raise BadRequest("invalid_endpoint", message) from None
    if not 1 <= port <= 65535:
        raise BadRequest("invalid_endpoint", f"endpoint port {port} is out of range")
    if address.is_unspecified or address.is_multicast:
        raise BadRequest("invalid_endpoint", f"endpoint host {host} cannot receive datagrams")
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _rows(store: Store, wanted: dict[int, Identity]) -> dict[int, OverlayAddress]:
    if not wanted:
        return {}
    rows = store.session.scalars(
        sa.select(OverlayAddress).where(OverlayAddress.identity_id.in_(list(wanted)))
    ).all()
    return {row.identity_id: row for row in rows}


def _inside(allocator: AddressAllocator, ipv4: str, ipv6: str) -> bool:
    try:
        return (
            ipaddress.IPv4Address(ipv4) in allocator.ipv4_range
            and ipaddress.IPv6Address(ipv6) in allocator.ipv6_prefix
        )
    except ValueError:
        return False
