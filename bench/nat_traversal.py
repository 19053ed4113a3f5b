"""`python -m bench.nat_traversal`: time to a direct path through simulated NATs (root).

For each pair of site kinds, builds the NAT lab (`tests/integration/natlab.py`), runs both
peers at once and records, per side, the seconds from the start of connectivity checks
(candidates exchanged) to the first selected direct pair, or that none was found. Prints a
table and, with --json, the raw rows. This is the probe-level figure; the row for
`umbra up --tun` to first packet and to the direct path needs the relay branch's path
abstraction wired in (see docs/nat.md).

    sudo python -m bench.nat_traversal --runs 3 [--pairs easy-easy,open-open]
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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    raise SystemExit(main())
