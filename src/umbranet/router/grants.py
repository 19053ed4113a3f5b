"""The grants a router holds for the controller's decisions: every circuit end and binding
an endpoint holds here by a ticket, as (identity, service, action, handle).

After a revocation epoch the router asks the controller about each of them (`recheck.py`);
dial grants whose ticket expired are re-validated or closed. Router links hold no grant:
only endpoints present tickets. The handle (a `Route` or a `Binding`) is what
`Switch.revoke` closes.
"""

from __future__ import annotations

from collections.abc import Iterable

from umbranet.router.links import LinkKind, Side, SwitchLink
from umbranet.router.terminators import TerminatorTable

__all__ = ["Grant", "expired_grants", "live_grants"]

Grant = tuple[str, str, str, object]
"""(identity, service, action, handle)."""


def live_grants(links: Iterable[SwitchLink], terminators: TerminatorTable) -> list[Grant]:
    """Every circuit end on the endpoint links among `links`, and every binding."""
    grants: list[Grant] = []
    for link in links:
        if link.kind is not LinkKind.ENDPOINT:
            continue
        for route in link.routes.values():
            action = "dial" if route.side is Side.DIALER else "bind"
            grants.append((link.identity, route.service, action, route))
    for binding in terminators.all():
        grants.append((binding.identity, binding.service, "bind", binding))
    return grants


def expired_grants(links: Iterable[SwitchLink], now: int) -> list[Grant]:
    """Dial grants on endpoint links whose ticket expired by `now` (unix seconds)."""
    expired: list[Grant] = []
    for link in links:
        if link.kind is not LinkKind.ENDPOINT:
            continue
        for route in link.routes.values():
            if route.side is Side.DIALER and 0 < route.expires_at <= now:
                expired.append((link.identity, route.service, "dial", route))
    return expired
