"""An identity's view of the network: what it may reach and whose keys it needs, nothing more.

With a policy in force this is the policy engine's `View` for the caller (its own posture and
the current time applied), with each peer's SPIFFE ID and Noise static key added from the
store. Before any policy, the interim attribute rule decides: the services it may use, and as
peers the identities that may take the other side of them (the hosts of what it may dial, the
dialers of what it may host). Other services, other identities and the policy text never
appear in it.

For network mode each peer also carries its overlay addresses, its published WireGuard
endpoint and `reach`: what that peer may open towards the caller, as ``tcp/8080``-style
entries, one per service the caller hosts (its host address names the protocol and port) that
the peer may dial under the peer's own posture, with ``icmp`` (a peer that may use a service
of the caller may ping it), plus what the policy's ``network`` rules let
the peer open towards the caller's addresses and approved routes (`policy.netgrants`). The
caller's packet filter admits exactly these new flows (see `proto.wireguard.flowfilter`); a
peer with an empty `reach` may only answer flows the caller started. ``routes`` are the
peer's approved routes (subnets, exit node) the caller may reach something inside.

A peer related by nothing (no service, no network rule, either way) is not listed: it never
learns the caller's key, address or endpoint, nor the caller its.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from umbranet.controller.authz import ActivePolicy, decide_access
from umbranet.controller.service.addresses import Overlay, OverlaySettings, addresses_for
from umbranet.controller.service.policy import active_policy, shared_inventory
from umbranet.controller.service.posture import report_of
from umbranet.controller.service.routes import approved_routes
from umbranet.controller.service.tickets import services_for
from umbranet.controller.store import Identity, Store
from umbranet.controller.store.overlay_models import OverlayAddress
from umbranet.policy import CompiledPolicy, Subject
from umbranet.policy import decide_access as attribute_rule
from umbranet.policy.netgrants import grants_towards, may_reach, routes_reachable
from umbranet.policy.network import IPAddress, IPNetwork

__all__ = ["IdentityView", "PeerKey", "identities_named", "view_of"]

_HOST_SCHEMES = ("tcp", "udp")

_OTHER = {"dial": "bind", "bind": "dial"}

_IN_LIMIT = 500


@dataclass(frozen=True, slots=True)
class PeerKey:
    name: str
    spiffe_id: str
    noise_public_key: str | None
    ipv4: str | None = None
    ipv6: str | None = None
    endpoint: str | None = None
    reach: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IdentityView:
    services: dict[str, list[str]]
    peers: list[PeerKey]
    http: dict[str, dict[str, Any]] = field(default_factory=dict)


def view_of(
    store: Store,
    identity: Identity,
    *,
    now: datetime,
    epoch: int,
    overlay: OverlaySettings | None = None,
    trust_domain: str = "",
) -> IdentityView:
    """The caller's view (see the module docstring); ``epoch`` is the controller's current
    revocation epoch (it keys the shared inventory). With ``overlay``, peers carry their
    overlay addresses, endpoints, reach and routes (network mode), and the peers that only
    the policy's ``network`` rules relate to the caller are added."""
    view = _view(store, identity, now=now, epoch=epoch)
    if overlay is None:
        return view
    active = active_policy(store)
    compiled = active.compiled if active is not None else None
    networked = compiled is not None and bool(compiled.policy.network.rules)
    routes = approved_routes(store, compiled) if networked else {}
    names = {p.name for p in view.peers}
    if compiled is not None and networked:
        names |= _network_peers(store, identity, compiled, routes)
    if not names:
        return view
    rows = [r for r in identities_named(store, names) if r.enabled and r.id != identity.id]
    # Our own addresses only matter to network rules (CIDRs covering them).
    addresses = addresses_for(store, [*rows, *([identity] if networked else [])], overlay,
                              trust_domain)  # fmt: skip
    reach = _reach(store, identity, view, rows, now)
    me = Subject.of(identity.name, identity.attributes)
    mine = addresses.get(identity.id)
    my_addresses = _ips(mine) if mine is not None else []
    peers = []
    for row in rows:
        found = addresses.get(row.id)
        entries = list(reach.get(row.name, ()))
        given: list[str] = []
        if compiled is not None and networked:
            them = Subject.of(row.name, row.attributes)
            more = grants_towards(compiled, them, me, my_addresses, routes.get(identity.id, []))
            entries.extend(e for e in more if e not in entries)
            given = [str(r) for r in routes_reachable(compiled, me, routes.get(row.id, []))]
        peers.append(
            PeerKey(
                row.name,
                row.spiffe_id,
                row.noise_public_key,
                found.ipv4 if found else None,
                found.ipv6 if found else None,
                found.endpoint if found else None,
                tuple(entries),
                tuple(given),
            )
        )
    return IdentityView(view.services, peers, view.http)


def _network_peers(
    store: Store,
    identity: Identity,
    compiled: CompiledPolicy,
    routes: dict[int, list[IPNetwork]],
) -> set[str]:
    """Identities a ``network`` rule relates to the caller, either way (to their overlay
    addresses or into their approved routes). Only identities that were ever given overlay
    addresses are candidates (the others never ran network mode). One pass over them per
    view: fine for thousands, not for 100,000 (an index by selector is the next step)."""
    me = Subject.of(identity.name, identity.attributes)
    stored = store.session.execute(
        sa.select(Identity, OverlayAddress).join(
            OverlayAddress, OverlayAddress.identity_id == Identity.id
        )
    ).all()
    mine = next((o for i, o in stored if i.id == identity.id), None)
    my_ips = _ips(mine) if mine is not None else []
    found: set[str] = set()
    for other, row in stored:
        if other.id == identity.id or not other.enabled:
            continue
        them = Subject.of(other.name, other.attributes)
        if may_reach(compiled, me, them, _ips(row), routes.get(other.id, [])) or may_reach(
            compiled, them, me, my_ips, routes.get(identity.id, [])
        ):
            found.add(other.name)
    return found


def _ips(row: OverlayAddress | Overlay) -> list[IPAddress]:
    return [ipaddress.ip_address(row.ipv4), ipaddress.ip_address(row.ipv6)]


def _reach(
    store: Store, identity: Identity, view: IdentityView, peers: list[Identity], now: datetime
) -> dict[str, list[str]]:
    """What each peer may open towards ``identity`` in network mode (module docstring)."""
    hosted: list[tuple[Any, str]] = []
    for name, actions in sorted(view.services.items()):
        row = store.service_by_name(name)
        entry = _host_port(row.host_address if row is not None else None)
        if "bind" in actions and row is not None and entry is not None:
            hosted.append((row, entry))
    if not hosted:
        return {}
    policy: ActivePolicy | None = active_policy(store)
    out: dict[str, list[str]] = {}
    for peer in peers:
        entries = out.setdefault(peer.name, [])
        for row, entry in hosted:
            verdict = decide_access(
                peer.attributes,
                row,
                "dial",
                subject=peer.spiffe_id,
                purpose="listing",
                identity_name=peer.name,
                policy=policy,
                posture=report_of(peer),
                now=now,
            )
            if verdict.allowed and entry not in entries:
                entries.append(entry)
        if entries and "icmp" not in entries:
            entries.append("icmp")
    return out


def _host_port(host_address: str | None) -> str | None:
    """``tcp://127.0.0.1:5432`` -> ``tcp/5432``; None for anything else."""
    if not host_address:
        return None
    scheme, sep, rest = host_address.partition("://")
    port = rest.rpartition(":")[2]
    if not sep or scheme not in _HOST_SCHEMES or not port.isdigit():
        return None
    return f"{scheme}/{int(port)}"


def _view(store: Store, identity: Identity, *, now: datetime, epoch: int) -> IdentityView:
    active = active_policy(store)
    if active is not None and active.compiled is not None:
        view = active.compiled.view(
            Subject.of(identity.name, identity.attributes),
            shared_inventory(store, epoch),
            posture=report_of(identity),
            now=now,
        )
        allowed: dict[str, list[str]] = {
            name: sorted(access.actions) for name, access in view.services.items()
        }
        http = {name: fragment.to_json() for name, fragment in view.http.items()}
        return IdentityView(allowed, _keys(store, view.peers), http)
    if active is not None:  # a policy that no longer compiles denies everything
        return IdentityView({}, [])
    services: dict[str, list[str]] = {s.name: s.actions for s in services_for(store, identity)}
    return IdentityView(services, _keys(store, _attribute_peers(store, identity, services)))


def _attribute_peers(store: Store, identity: Identity, services: dict[str, list[str]]) -> set[str]:
    peers: set[str] = set()
    rows = {row.name: row for row in store.services() if row.name in services}
    for other in store.identities():
        if other.id == identity.id or not other.enabled:
            continue
        for name, actions in services.items():
            if any(
                attribute_rule(other.attributes, rows[name], _OTHER[a]).allowed for a in actions
            ):
                peers.add(other.name)
                break
    return peers


def identities_named(store: Store, names: Collection[str]) -> list[Identity]:
    """The enabled-or-not identities named, sorted by name, in ONE query whatever their
    number: a view can name thousands of peers, and a query per peer (or per chunk of bound
    parameters) made the view's cost grow with them. Past `_IN_LIMIT` names the whole table
    is read and filtered here, which is cheaper than many round trips and stays under every
    backend's limit on bound parameters."""
    if not names:
        return []
    if len(names) <= _IN_LIMIT:
        query = sa.select(Identity).where(Identity.name.in_(sorted(names)))
        return sorted(store.session.scalars(query), key=lambda r: r.name)
    wanted = set(names)
    everyone = store.session.scalars(sa.select(Identity))
    return sorted((r for r in everyone if r.name in wanted), key=lambda r: r.name)


def _keys(store: Store, names: set[str] | frozenset[str]) -> list[PeerKey]:
    rows = identities_named(store, names)
    return [PeerKey(row.name, row.spiffe_id, row.noise_public_key) for row in rows if row.enabled]
