"""Interleaved A/B of `ab_transfer.py` over several trees: median CPU seconds per GB.

    python bench/ab_interleave.py ROUNDS TREE [TREE ...]

Each round runs every tree once, in turn, so slow spells of a shared machine fall on all of
them alike; prints the median and range of CPU s/GB and MB/s per tree (RESULTS-core-ab.md).
`TOTAL` (bytes per run, default 256 MiB) is passed through.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().with_name("ab_transfer.py")


def main(rounds: int, trees: list[str]) -> None:
    results: dict[str, list[tuple[float, int]]] = {tree: [] for tree in trees}
    total = os.environ.get("TOTAL", str(256 * 1024 * 1024))
    for _ in range(rounds):
        for tree in trees:
            env = dict(os.environ, PYTHONPATH=f"{tree}/src:{tree}", TESTS_ROOT=tree, TOTAL=total)
            out = subprocess.run(
                [sys.executable, str(SCRIPT), Path(tree).name],
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            ).stdout
            found = re.search(r"cpu_s_per_GB=([\d.]+) wall_MBps=(\d+)", out)
            assert found, out
            results[tree].append((float(found.group(1)), int(found.group(2))))
    for tree, runs in results.items():
        cpu = [r[0] for r in runs]
        rate = [r[1] for r in runs]
        print(
            f"{tree}: CPU s/GB median {statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f});"
            f" MB/s median {statistics.median(rate)} ({min(rate)}-{max(rate)}); runs {cpu}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
