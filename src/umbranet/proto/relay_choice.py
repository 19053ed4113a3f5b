"""Which router(s) carry a relayed WireGuard path: the ones that make it shortest, sans-IO.

A relayed datagram goes device A → router RA → (the router mesh, when RB ≠ RA) → router RB →
device B, so its latency is ``rtt(A, RA) + mesh(RA, RB) + rtt(RB, B)``; the first router the
controller happens to list can be the far side of the world for both. Each device measures
its RTT to the routers it links to (the SDK's router ranking, `umbra netcheck`), and routers
measure their mesh links; `choose_relay` takes those figures and returns the pair of routers
with the least total, one router (mesh cost zero) when that is shortest.

Figures that are missing are not guessed: a router a device has not measured is not a
candidate on its side, and two different routers are a candidate pair only when the mesh
figure between them is known (they may not be linked at all). Ties go to the lexically first
names so both devices of a pair, given the same figures, pick the same routers.

`rank_relays` is the one-sided form a device uses to pick its own relay link when it knows
nothing of the peer yet: measured routers fastest first, then the unmeasured ones in the
order given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["RelayChoice", "choose_relay", "mesh_cost", "rank_relays"]


@dataclass(frozen=True, slots=True)
class RelayChoice:
    mine: str  # the router this device sends the pair's datagrams to
    theirs: str  # the router the peer receives them from (== mine: one router relays)
    cost_ms: float  # rtt(me, mine) + mesh(mine, theirs) + rtt(theirs, peer)

    @property
    def one_router(self) -> bool:
        return self.mine == self.theirs


def mesh_cost(mesh: Mapping[tuple[str, str], float], a: str, b: str) -> float | None:
    """RTT between two routers over the mesh in ms; 0 for the same router; None when unknown
    (not linked, or not measured). Each end measures the link on its own, so both figures
    may exist and differ: the lower is taken, so that both devices of a pair weigh the link
    alike whichever end they look from."""
    if a == b:
        return 0.0
    found = [f for f in (mesh.get((a, b)), mesh.get((b, a))) if f is not None]
    return min(found) if found else None


def choose_relay(
    mine: Mapping[str, float | None],
    theirs: Mapping[str, float | None],
    mesh: Mapping[tuple[str, str], float],
) -> RelayChoice | None:
    """The routers that minimise the relayed path between two devices, from each device's
    measured RTT (ms) to routers and the routers' mesh RTTs; None when no path is known."""
    best: RelayChoice | None = None
    for ra, to_ra in sorted(mine.items()):
        if to_ra is None or to_ra < 0:
            continue
        for rb, to_rb in sorted(theirs.items()):
            if to_rb is None or to_rb < 0:
                continue
            between = mesh_cost(mesh, ra, rb)
            if between is None:
                continue
            cost = to_ra + between + to_rb
            if best is None or cost < best.cost_ms:
                best = RelayChoice(ra, rb, cost)
    return best


def rank_relays(routers: Sequence[str], rtt_ms: Mapping[str, float | None]) -> list[str]:
    """`routers` with the measured ones first, fastest first (stable for equal figures), then
    the unmeasured in their given order."""
    measured = [r for r in routers if rtt_ms.get(r) is not None]
    measured.sort(key=lambda r: rtt_ms[r] or 0.0)
    return [*measured, *(r for r in routers if rtt_ms.get(r) is None)]
