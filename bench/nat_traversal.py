"""`python -m bench.nat_traversal`: time to a direct path through simulated NATs (root).

For each pair of site kinds, builds the NAT lab (`tests/integration/natlab.py`), runs both
peers at once and records, per side, the seconds from the start of connectivity checks
(candidates exchanged) to the first selected direct pair, or that none was found. Prints a
table and, with --json, the raw rows. With --tun, instead: two
devices behind easy NATs run `umbra up --tun` (controller and two STUN routers on the lab's
wan) and the figures are the seconds from starting both agents to the first answered ping
between their overlay addresses (relayed through the router at first), and to both
reporting a direct path.

    sudo python -m bench.nat_traversal --runs 3 [--pairs easy-easy,open-open] [--tun]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PAIRS = ("open-open", "easy-open", "easy-easy", "hard-open", "hard-hard")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pairs", default=",".join(DEFAULT_PAIRS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tun", action="store_true", help="time umbra up --tun instead")
    args = parser.parse_args(argv)
    if args.tun:
        return _tun(args.runs)
    sys.path.insert(0, str(REPO))
    import os

    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    from tests.integration.natlab import NatLab
    from tests.integration.netns_helper import Lab
    from tests.integration.test_natlab import run_pair

    rows: list[dict[str, object]] = []
    for pair in args.pairs.split(","):
        a, _, b = pair.partition("-")
        for run in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                lab = Lab(Path(tmp))
                try:
                    ra, rb = run_pair(NatLab(lab), Path(tmp), a, b)
                finally:
                    lab.destroy()
            first = [r["selected"][0]["at"] if r["selected"] else None for r in (ra, rb)]
            rows.append({"pair": pair, "run": run, "direct_after_s": first})
    if args.json:
        print(json.dumps(rows, indent=2))
    print(f"{'pair':<12} {'direct':<7} {'median s to direct (both sides)':>32}")
    for pair in args.pairs.split(","):
        times = [t for r in rows if r["pair"] == pair for t in r["direct_after_s"]]  # type: ignore[attr-defined]
        found = [t for t in times if t is not None]
        median = f"{statistics.median(found):.3f}" if found else "-"
        print(f"{pair:<12} {len(found)}/{len(times):<5} {median:>32}")
    return 0


def _tun(runs: int) -> int:
    """Seconds from `umbra up --tun` on two easy-NAT devices to first ping and direct path."""
    import os
    import time

    sys.path.insert(0, str(REPO))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    from tests.integration.natlab_tun import World
    from tests.integration.netns_helper import Lab
    from umbranet.agent.localapi import AgentApiError

    for run in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "logs").mkdir()
            lab = Lab(Path(tmp) / "logs")
            try:
                world = World.build(lab, Path(tmp), {"a": "easy", "b": "easy"})
                started = min(world.up("a"), world.up("b"))
                first = direct = None
                deadline = started + 90
                while time.monotonic() < deadline and (first is None or direct is None):
                    try:
                        peer = world.peer("a", "dev-b")
                        other = world.peer("b", "dev-a")
                    except (OSError, AgentApiError, KeyError, TypeError):
                        peer = other = None  # the agent is not up yet
                    if peer and first is None and world.ping("a", peer["ipv4"], wait=0.5):
                        first = time.monotonic() - started
                    if (
                        peer
                        and other
                        and direct is None
                        and peer.get("path") == "direct" == other.get("path")
                    ):
                        direct = time.monotonic() - started
                    time.sleep(0.05)
                print(f"run {run}: up -> first ping {first} s, up -> direct path {direct} s")
            finally:
                lab.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
