"""An identity's view of the network: what it may reach and whose keys it needs, nothing more.

With a policy in force this is the policy engine's `View` for the caller (its own posture and
the current time applied), with each peer's SPIFFE ID and Noise static key added from the
store. Before any policy, the interim attribute rule decides: the services it may use, and as
peers the identities that may take the other side of them (the hosts of what it may dial, the
dialers of what it may host). Other services, other identities and the policy text never
appear in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from umbranet.controller.service.policy import active_policy, shared_inventory
from umbranet.controller.service.posture import report_of
from umbranet.controller.service.tickets import services_for
from umbranet.controller.store import Identity, Store
from umbranet.policy import Subject
from umbranet.policy import decide_access as attribute_rule

__all__ = ["IdentityView", "PeerKey", "view_of"]

_OTHER = {"dial": "bind", "bind": "dial"}


@dataclass(frozen=True, slots=True)
class PeerKey:
    name: str
    spiffe_id: str
    noise_public_key: str | None


@dataclass(frozen=True, slots=True)
class IdentityView:
    services: dict[str, list[str]]
    peers: list[PeerKey]
    http: dict[str, dict[str, Any]] = field(default_factory=dict)


def view_of(store: Store, identity: Identity, *, now: datetime, epoch: int) -> IdentityView:
    """The caller's view (see the module docstring); ``epoch`` is the controller's current
    revocation epoch (it keys the shared inventory)."""
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


def _keys(store: Store, names: set[str] | frozenset[str]) -> list[PeerKey]:
    keys: list[PeerKey] = []
    for name in sorted(names):
        row = store.identity_by_name(name)
        if row is not None and row.enabled:
            keys.append(PeerKey(row.name, row.spiffe_id, row.noise_public_key))
    return keys
