"""How long an ``umbra`` command takes to start, and which imports the time goes to.

Each command runs ``--runs`` times in a fresh interpreter (like hyperfine: interleaved, after
one warm-up round), and the median, minimum and 90th percentile wall times are printed beside
a bare ``python -c pass``, the floor no command can go below. ``--importtime`` then runs each
command once under ``python -X importtime`` and lists the slowest top-level imports.

    python -m bench.cli_startup --runs 15 --importtime
    python -m bench.cli_startup --baseline OTHER_CHECKOUT/src   # and another tree, interleaved

Commands that need a controller or an agent are run without one (a fresh ``--home`` and
``--state-dir``): they fail fast with their usual message, after paying all of their start-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, list[str]] = {
    "python -c pass": [],
    "umbra --help": ["--help"],
    "umbra --version": ["--version"],
    "umbra status": ["status"],
    "umbra dial --help": ["dial", "--help"],
    "umbra identity list": ["identity", "list"],
}

_ENTRY = "from umbranet.cli.main import main; main()"


def _argv(args: list[str]) -> list[str]:
    if not args:
        return [sys.executable, "-c", "pass"]
    return [sys.executable, "-c", _ENTRY, *args]


def _environment(src: Path, scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    env["UMBRA_HOME"] = str(scratch / "home")
    env["UMBRA_AGENT_DIR"] = str(scratch / "agent")
    return env


def _time_once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def _top_imports(argv: list[str], env: dict[str, str], count: int) -> list[tuple[int, str]]:
    """The slowest imports made directly by the program (cumulative µs, module)."""
    result = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    rows: list[tuple[int, str]] = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        parts = line.split("|")
        cumulative = parts[1].strip()
        name = parts[2]
        # Top-level imports are indented by exactly one space after the bar.
        if name.startswith(" ") and not name.startswith("  "):
            rows.append((int(cumulative), name.strip()))
    rows.sort(reverse=True)
    return rows[:count]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument(
        "--baseline", type=Path, help="Also time this source tree, interleaved, for a ratio."
    )
    parser.add_argument("--importtime", action="store_true")
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        env = _environment(args.src.resolve(), Path(scratch))
        trees = {"": env}
        if args.baseline is not None:
            trees[" (baseline)"] = _environment(args.baseline.resolve(), Path(scratch))
        jobs = {
            f"{name}{tag}": (command, tree_env)
            for name, command in COMMANDS.items()
            for tag, tree_env in trees.items()
            if command or not tag
        }
        times: dict[str, list[float]] = {name: [] for name in jobs}
        for command, tree_env in jobs.values():  # warm-up: page cache, .pyc files
            _time_once(_argv(command), tree_env)
        for _ in range(args.runs):
            for name, (command, tree_env) in jobs.items():
                times[name].append(_time_once(_argv(command), tree_env))

        print(f"| command | median s | min s | p90 s | runs={args.runs} |")
        print("|---|---|---|---|---|")
        for name, samples in times.items():
            ordered = sorted(samples)
            p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
            label = f"`{name.removesuffix(' (baseline)')}`" + (
                " baseline" if name.endswith("(baseline)") else ""
            )
            median = statistics.median(samples)
            print(f"| {label} | {median:.3f} | {ordered[0]:.3f} | {p90:.3f} | |")
        if args.importtime:
            for name, command in COMMANDS.items():
                if not command:
                    continue
                print(f"\n`{name}`: slowest top-level imports (cumulative ms)")
                for micros, module in _top_imports(_argv(command), env, args.top):
                    print(f"  {micros / 1000:7.1f}  {module}")


if __name__ == "__main__":
    main()
