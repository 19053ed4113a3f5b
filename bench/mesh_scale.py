"""The controller's route computation for a large mesh, in simulation (no processes).

`python -m bench.mesh_scale [--routers N] [--services S]` builds a random mesh (a ring
plus random chords, about four links per router, RTTs 0.5-20 ms), binds each service at
two random routers and measures `controller.service.links.LinkGraph` as the API drives it:

- **cold**: every router reports once into an empty graph, the reports spread over one
  report interval (5 s) as they would arrive; the graph changes with every report, and
  snapshots are rebuilt at most every 0.5 s (`RECOMPUTE_EVERY`, as the API does):
  controller CPU for the round, reports/s and routes/s it sustains;
- **steady**: every router reports again with RTTs jittered within the graph's noise
  band (nothing moves, answers come from the snapshot): reports/s and routes/s;
- **reroute**: one busy link dies (both ends report it gone); the next snapshot is built
  and every router reports and gets its new routes: the CPU time of one controller
  process until the whole mesh has its new routes. This is the controller's share of
  path setup after a failure; the routers' share (report round trip, install) is
  `Peers.statistics()`'s `setup_ms`, and a new stream's setup over a multi-router path
  is the `connect` column of the `umbranet-mesh2`/`-mesh3` rows.

Prints one JSON object; `bench` puts it in the "Scale" table (`mesh` rows).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from typing import Any

from umbranet.controller.api.routes_mesh import RECOMPUTE_EVERY
from umbranet.controller.service.links import LinkGraph

__all__ = ["main", "measure"]

INTERVAL = 5.0
"""A router's report interval (`Peers`): a round of reports arrives over this long."""


def _mesh(
    routers: int, services: int, rng: random.Random
) -> tuple[list[str], dict[str, dict[str, float]], dict[str, set[str]]]:
    names = [f"spiffe://bench.umbra/router/r{i:05d}" for i in range(routers)]
    links: dict[str, dict[str, float]] = {n: {} for n in names}

    def join(a: str, b: str) -> None:
        if a != b:
            rtt = round(rng.uniform(0.5, 20.0), 3)
            links[a][b] = links[b][a] = rtt

    for i, name in enumerate(names):
        join(name, names[(i + 1) % routers])
        join(name, rng.choice(names))
    bound: dict[str, set[str]] = {n: set() for n in names}
    for s in range(services):
        for name in rng.sample(names, 2):
            bound[name].add(f"svc{s}")
    return names, links, bound


def measure(routers: int = 1000, services: int = 50, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    names, links, bound = _mesh(routers, services, rng)
    graph = LinkGraph(stale_after=1e9, recompute_every=RECOMPUTE_EVERY)
    now = 0.0
    clock = [0.0]  # the monotonic clock the reports arrive by
    result: dict[str, Any] = {"routers": routers, "services": services}
    links_total = sum(len(v) for v in links.values()) // 2
    result["links"] = links_total

    def round_of_reports(jitter: float) -> tuple[float, int]:
        start = time.process_time()
        routes = 0
        for name in names:
            clock[0] += INTERVAL / len(names)
            rtts = {p: r * (1 + rng.uniform(-jitter, jitter)) for p, r in links[name].items()}
            routes += len(graph.report(name, bound[name], rtts, now, mono=clock[0]))
        return time.process_time() - start, routes

    took, routes = round_of_reports(0.0)
    result["cold"] = _rates(took, routes)
    took, routes = round_of_reports(0.05)
    result["steady"] = _rates(took, routes)
    computed = graph.computed
    # Kill the link of the router with the most routes through it: a busy one.
    a = max(names, key=lambda n: len(links[n]))
    b = max(links[a], key=lambda p: len(links[p]))
    del links[a][b], links[b][a]
    start = time.process_time()
    clock[0] += RECOMPUTE_EVERY  # the dead link is news: the next report rebuilds
    graph.report(a, bound[a], links[a], now, mono=clock[0])
    graph.report(b, bound[b], links[b], now, mono=clock[0])
    took, routes = round_of_reports(0.0)
    result["reroute"] = {
        "cpu_s": round(time.process_time() - start, 4),
        "dijkstra_runs": graph.computed - computed,
        **_rates(took, routes),
    }
    for phase in ("cold", "steady", "reroute"):
        result[phase]["reports_per_s"] = round(routers / max(result[phase]["cpu_s"], 1e-9))
    result["snapshots"] = graph.version
    return result


def _rates(seconds: float, routes: int) -> dict[str, Any]:
    seconds = max(seconds, 1e-9)
    return {"cpu_s": round(seconds, 4), "routes": routes, "routes_per_s": round(routes / seconds)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.mesh_scale")
    parser.add_argument("--routers", type=int, default=1000)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = measure(args.routers, args.services, args.seed)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
