"""The traffic rule of the benchmark: which addresses a load may target.

Every client the harness starts checks its target here first, so a typo or a bad plug-in can
never point a load generator at the outside world: only the benchmark ranges (198.18.0.0/15,
RFC 2544), the shared/CGNAT range the overlays use (100.64.0.0/10) and loopback are allowed.
"""

from __future__ import annotations

import ipaddress

__all__ = ["ALLOWED_NETWORKS", "TargetRefused", "check_target"]

ALLOWED_NETWORKS = (
    ipaddress.ip_network("198.18.0.0/15"),
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("127.0.0.0/8"),
)


class TargetRefused(ValueError):
    """A load was pointed at an address outside the benchmark ranges."""

    code = "target_refused"


def check_target(host: str) -> str:
    """Return `host` if it is a literal address inside the allowed ranges, else raise.

    Names are refused too: resolving them could leave the namespaces (and no DNS is set up there).
    """
    try:
        addr = ipaddress.ip_address(host)
    except ValueError as exc:
        raise TargetRefused(f"target {host!r} is not a literal IP address") from exc
    if not any(addr in net for net in ALLOWED_NETWORKS):
        raise TargetRefused(f"target {host} is outside 198.18.0.0/15, 100.64.0.0/10, 127.0.0.0/8")
    return host
