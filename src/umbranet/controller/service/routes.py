"""Advertised routes (network mode): subnet routers and exit nodes, and who approved them.

An agent started with ``--advertise-routes 10.1.0.0/16`` (or ``--advertise-exit-node``,
which advertises ``0.0.0.0/0`` and ``::/0``) says so with ``PUT /v1/network/routes``; the
prefixes are stored unapproved. A route counts (peers may be given it, the advertiser's
filter admits flows into it) once it is approved, either by an admin (``umbra route
approve``, stored with who and when) or by the policy's ``autoApprovers`` (evaluated against
the policy in force, never stored, so a policy change takes effect at once).

Why approval at all: advertising ``10.0.0.0/8`` would otherwise let any identity attract
other identities' traffic for that range. Why refuse prefixes overlapping the overlay
ranges: a route there would shadow peers' own addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from umbranet.controller.service.addresses import OverlaySettings
from umbranet.controller.service.errors import BadRequest, NotFound
from umbranet.controller.store import Identity, Store
from umbranet.controller.store.overlay_models import OverlayRoute
from umbranet.policy import CompiledPolicy, Subject
from umbranet.policy.network import EXIT_ROUTES, IPNetwork, route_auto_approved

__all__ = [
    "MAX_ROUTES",
    "RouteInfo",
    "advertise",
    "approve",
    "approved_routes",
    "normalize_routes",
    "route_table",
]

MAX_ROUTES = 64


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """One advertised prefix and its state: approved by ``admin:<who>``, ``policy``, or not."""

    identity: str
    prefix: str
    exit_node: bool
    approved: str | None
    advertised_at: datetime

    def to_json(self) -> dict[str, object]:
        return {
            "identity": self.identity,
            "prefix": self.prefix,
            "exit_node": self.exit_node,
            "approved": self.approved,
            "advertised_at": self.advertised_at.isoformat(),
        }


def normalize_routes(
    prefixes: Iterable[str], *, exit_node: bool, overlay: OverlaySettings, trust_domain: str
) -> list[IPNetwork]:
    """Parse and check advertised prefixes (BadRequest ``invalid_route``); the exit routes
    are added with ``exit_node`` and refused without it."""
    allocator = overlay.allocator(trust_domain)
    found: list[IPNetwork] = []
    for text in prefixes:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise BadRequest("invalid_route", f"{text!r} is not a CIDR") from None
        if network.prefixlen == 0:
            raise BadRequest("invalid_route", "advertise an exit node with exit_node, not /0")
        if network.is_multicast or network.is_loopback or network.is_link_local:
            raise BadRequest("invalid_route", f"{network} cannot be routed to a LAN")
        if network.overlaps(allocator.ipv4_range) or network.overlaps(allocator.ipv6_prefix):
            raise BadRequest("invalid_route", f"{network} overlaps the overlay's own addresses")
        found.append(network)
    if exit_node:
        found.extend(EXIT_ROUTES)
    unique = list(dict.fromkeys(found))
    if len(unique) > MAX_ROUTES:
        raise BadRequest("invalid_route", f"at most {MAX_ROUTES} routes per identity")
    return unique


def advertise(
    store: Store, identity: Identity, routes: list[IPNetwork], *, now: datetime
) -> list[str]:
    """Make the identity's advertised routes exactly ``routes``; a prefix advertised before
    keeps its approval, a withdrawn one loses it."""
    wanted = {str(r) for r in routes}
    rows = store.session.scalars(
        sa.select(OverlayRoute).where(OverlayRoute.identity_id == identity.id)
    ).all()
    for row in rows:
        if row.prefix not in wanted:
            store.session.delete(row)
    have = {row.prefix for row in rows}
    for prefix in sorted(wanted - have):
        store.session.add(OverlayRoute(identity_id=identity.id, prefix=prefix, advertised_at=now))
    store.session.flush()
    return sorted(wanted)


def approve(
    store: Store,
    name: str,
    prefixes: Iterable[str],
    *,
    actor: str | None,
    now: datetime,
) -> list[str]:
    """Approve (``actor`` set) or withdraw approval (``actor`` None) of advertised prefixes;
    ``exit`` names both exit routes. NotFound ``unknown_route`` for one not advertised."""
    identity = store.identity_by_name(name)
    if identity is None:
        raise NotFound("unknown_identity", f"no identity is named {name!r}")
    rows = {
        row.prefix: row
        for row in store.session.scalars(
            sa.select(OverlayRoute).where(OverlayRoute.identity_id == identity.id)
        ).all()
    }
    done: list[str] = []
    for text in prefixes:
        if text == "exit":
            wanted = [str(r) for r in EXIT_ROUTES]
        else:
            try:
                wanted = [str(ipaddress.ip_network(text, strict=False))]
            except ValueError:
                raise BadRequest("invalid_route", f"{text!r} is not a CIDR") from None
        for prefix in wanted:
            row = rows.get(prefix)
            if row is None:
                raise NotFound("unknown_route", f"{name} does not advertise {prefix}")
            row.approved_by, row.approved_at = (actor, now) if actor else (None, None)
            done.append(prefix)
    store.session.flush()
    return done


def route_table(store: Store, compiled: CompiledPolicy | None) -> list[RouteInfo]:
    """Every advertised route with its approval state, by identity name then prefix."""
    out: list[RouteInfo] = []
    for row, identity in _rows(store):
        approval = _approval(row, identity, compiled)
        prefix = ipaddress.ip_network(row.prefix)
        exit_node = prefix in EXIT_ROUTES
        out.append(RouteInfo(identity.name, row.prefix, exit_node, approval, row.advertised_at))
    return sorted(out, key=lambda r: (r.identity, r.prefix))


def approved_routes(store: Store, compiled: CompiledPolicy | None) -> dict[int, list[IPNetwork]]:
    """Approved routes of enabled identities, by identity id."""
    out: dict[int, list[IPNetwork]] = {}
    for row, identity in _rows(store):
        if identity.enabled and _approval(row, identity, compiled) is not None:
            out.setdefault(identity.id, []).append(ipaddress.ip_network(row.prefix))
    return out


def _rows(store: Store) -> list[tuple[OverlayRoute, Identity]]:
    found = store.session.execute(
        sa.select(OverlayRoute, Identity).join(Identity, Identity.id == OverlayRoute.identity_id)
    ).all()
    return [(route, identity) for route, identity in found]


def _approval(row: OverlayRoute, identity: Identity, compiled: CompiledPolicy | None) -> str | None:
    if row.approved_by:
        return f"admin:{row.approved_by}"
    if compiled is not None:
        subject = Subject.of(identity.name, identity.attributes)
        if route_auto_approved(compiled, subject, ipaddress.ip_network(row.prefix)):
            return "policy"
    return None
