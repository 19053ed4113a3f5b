"""Policy engine at scale: 100,000 identities, 5,000 services, 5,000 rules.

Run from the repo root (no root, no network; about a minute)::

    .venv/bin/python -m bench.policy_scale            # full size, writes bench/POLICY_RESULTS.md
    .venv/bin/python -m bench.policy_scale --identities 10000 --no-write   # quick look

It builds a synthetic but shaped-like-real network (teams as tags, 1,000 groups with nested
groups, hosts per service group, attribute-wide and per-service rules with port lists, deny
rules, posture-gated rules, a few everyone-rules) from a fixed seed, writes it as a HuJSON
document with comments, and measures, each in a bounded loop:

- parse + validate + compile (and the document's own tests);
- decisions per second (random requests, and requests that are allowed);
- one explanation;
- one identity's view, cold (fresh caches) and warm;
- every identity's view (the full recompute after a change);
- a realistic change (one rule edited, one group grown): recompile, change impact
  (`affected_identities`), and recomputing only the affected views.

Figures depend on the machine; the table records it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from umbranet.policy import (
    CompiledPolicy,
    Inventory,
    PostureReport,
    ServiceRef,
    Subject,
    affected_identities,
    compile_policy,
)
from umbranet.policy.hujson import loads

T = TypeVar("T")
NOW = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
POSTURE = PostureReport(os="linux", sdk_version="0.3.0", source_ip="10.1.2.3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--services", type=int, default=5_000)
    parser.add_argument("--rules", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--view-sample", type=int, default=2_000)
    parser.add_argument("--no-full", action="store_true", help="skip recomputing every view")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("POLICY_RESULTS.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    args.load_before = _load()
    rng = random.Random(args.seed)
    world = build_world(rng, args.identities, args.services, args.rules)
    rows: list[tuple[str, str]] = []

    def record(label: str, value: str) -> None:
        rows.append((label, value))
        print(f"  {label:<58} {value}", flush=True)

    print(f"policy scale bench: {args.identities:,} identities, {args.services:,} services, "
          f"{args.rules:,} rules (seed {args.seed})")  # fmt: skip
    text, inventory = world["text"], world["inventory"]
    record("document size", f"{len(text) / 1e6:.1f} MB, {text.count(chr(10)):,} lines")

    seconds, _ = timed(lambda: loads(text))
    record("parse HuJSON", f"{seconds * 1e3:,.0f} ms")
    seconds, policy = timed(lambda: compile_policy(text, inventory))
    record("parse + validate + compile + run tests", f"{seconds * 1e3:,.0f} ms")

    subjects = list(inventory.identities())
    services = list(inventory.services())
    asks = [
        (rng.choice(subjects), rng.choice(services), rng.choice(("dial", "dial", "bind")),
         rng.choice((None, 443, 5432, 8080, 22)))
        for _ in range(args.decisions)
    ]  # fmt: skip
    rate, allowed = decision_rate(policy, asks)
    record("decisions/s, random requests", f"{rate:,.0f}/s ({allowed:.1%} allowed)")

    sample = rng.sample(subjects, min(args.view_sample, len(subjects)))
    hits = allowed_requests(policy, sample, inventory, rng, args.decisions // 4)
    rate, allowed = decision_rate(policy, hits)
    record("decisions/s, allowed requests (with posture)", f"{rate:,.0f}/s ({allowed:.0%} allowed)")

    who, svc, action, port = hits[0][:4] if hits else asks[0][:4]
    seconds, explained = timed(
        lambda: policy.explain(who, svc, action, port, posture=POSTURE, now=NOW), repeat=20
    )
    record("explain one request", f"{seconds * 1e3:.2f} ms ({len(explained.rules)} rules listed)")

    fresh = compile_policy(text, inventory, run_tests=False)
    seconds, _ = timed(lambda: fresh.view(sample[0], posture=POSTURE, now=NOW))
    record("view of one identity, cold caches", f"{seconds * 1e3:.1f} ms")
    start = time.perf_counter()
    sizes = [len(fresh.view(s, posture=POSTURE, now=NOW).peers) for s in sample]
    each = (time.perf_counter() - start) / len(sample)
    record(
        f"view of one identity, mean of {len(sample):,}",
        f"{each * 1e3:.2f} ms (mean {sum(sizes) / len(sizes):.0f} peers)",
    )

    if not args.no_full:
        start = time.perf_counter()
        for subject in subjects:
            fresh.view(subject, posture=POSTURE, now=NOW)
        seconds = time.perf_counter() - start
        record(f"full recompute: all {len(subjects):,} views", f"{seconds:,.1f} s")

    changed_text = change(world)
    seconds, changed = timed(lambda: compile_policy(changed_text, inventory))
    record("change: one rule edited + one group grown, recompile", f"{seconds * 1e3:,.0f} ms")
    seconds, affected = timed(lambda: affected_identities(policy, changed, inventory))
    record("change impact (affected_identities)", f"{seconds * 1e3:,.0f} ms, {len(affected):,} ids")
    start = time.perf_counter()
    for name in affected:
        ident = inventory.identity(name)
        if ident is not None:
            changed.view(ident, posture=POSTURE, now=NOW)
    seconds = time.perf_counter() - start
    record("incremental recompute of the affected views", f"{seconds * 1e3:,.0f} ms")

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record("peak RSS of the bench process", f"{rss:,.0f} MiB")
    if not args.no_write:
        write_results(args, rows)
        print(f"wrote {args.out}")
    return 0


# -- the synthetic network ---------------------------------------------------------------------


def build_world(rng: random.Random, n_ids: int, n_svcs: int, n_rules: int) -> dict[str, Any]:
    teams = max(1, n_ids // 200)
    n_groups = max(2, n_svcs // 5)
    host_groups = max(1, n_svcs // 5)
    attributes = max(1, n_svcs // 25)
    services = {
        f"s{j}": [f"a{rng.randrange(attributes)}" for _ in range(rng.randint(1, 2))]
        for j in range(n_svcs)
    }
    identities: dict[str, list[str]] = {}
    for i in range(n_ids):
        tags = [f"team{rng.randrange(teams)}"]
        if i < host_groups * 3:
            tags = [f"hosts{i // 3}"]
        identities[f"u{i}"] = tags
    inventory = Inventory(services, identities)
    names = list(identities)
    groups: dict[str, list[str]] = {}
    for g in range(n_groups):
        members = [*rng.sample(names, 50), f"tag:team{rng.randrange(teams)}"]
        if g > 10 and rng.random() < 0.1:
            members.append(f"group:g{rng.randrange(g)}")
        groups[f"group:g{g}"] = members
    tag_owners = {f"tag:team{t}": ["group:g0"] for t in range(teams)}
    tag_owners.update({f"tag:hosts{h}": ["group:g0"] for h in range(host_groups)})

    def src() -> list[str]:
        pick = []
        for _ in range(rng.randint(1, 3)):
            roll = rng.random()
            if roll < 0.6:
                pick.append(f"group:g{rng.randrange(n_groups)}")
            elif roll < 0.85:
                pick.append(f"tag:team{rng.randrange(teams)}")
            else:
                pick.append(rng.choice(names))
        return pick

    def dst() -> list[str]:
        out = []
        for _ in range(rng.randint(1, 4)):
            ports = rng.choice(["", ":443", ":443,8443", ":5432", ":8000-8100", ":*"])
            if rng.random() < 0.15:
                out.append(f"attr:a{rng.randrange(attributes)}{ports}")
            else:
                out.append(f"svc:s{rng.randrange(n_svcs)}{ports}")
        return out

    rules: list[dict[str, Any]] = []
    for h in range(host_groups):  # each host group binds five services
        targets = [f"svc:s{j}" for j in range(h * 5, min(n_svcs, h * 5 + 5))]
        rules.append({"action": "bind", "src": [f"tag:hosts{h}"], "dst": targets})
    while len(rules) < n_rules:
        roll = rng.random()
        rule: dict[str, Any] = {"action": "dial", "src": src(), "dst": dst()}
        if roll < 0.05:
            rule["deny"] = True
        elif roll < 0.06:
            rule["posture"] = ["posture:corp"]
        elif roll < 0.0615:
            rule["src"] = ["*"]
        rules.append(rule)
    first_dial = next(i for i, r in enumerate(rules) if r["action"] == "dial" and not r.get("deny"))
    doc = {
        "groups": groups,
        "tagOwners": tag_owners,
        "postures": {"posture:corp": {"os": ["linux", "darwin"], "sdkVersion": ">=0.2",
                                      "sourceCidr": ["10.0.0.0/8"]}},
        "rules": rules,
        "tests": [{"src": names[-1], "deny": ["bind svc:s0"]}],
    }  # fmt: skip
    text = "// synthetic policy for bench/policy_scale.py\n" + hujson_dump(doc)
    return {"text": text, "doc": doc, "inventory": inventory, "rng": rng, "probe": first_dial}


def hujson_dump(doc: dict[str, Any]) -> str:
    """JSON with a comment per rule and trailing commas, one rule per line."""
    lines = ["{"]
    for key, value in doc.items():
        if key == "rules":
            lines.append('  "rules": [')
            for index, rule in enumerate(value):
                lines.append(f"    {json.dumps(rule)},  // rule {index}")
            lines.append("  ],")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)},")
    lines.append("}")
    return "\n".join(lines) + "\n"


def change(world: dict[str, Any]) -> str:
    """One dial rule gets another destination; one group gains ten members."""
    doc = json.loads(json.dumps(world["doc"]))
    rng: random.Random = world["rng"]
    doc["rules"][world["probe"]]["dst"].append("svc:s1")
    some_group = rng.choice(sorted(doc["groups"]))
    doc["groups"][some_group].extend(
        f"u{rng.randrange(len(world['inventory']))}" for _ in range(10)
    )
    return hujson_dump(doc)


# -- measurements ------------------------------------------------------------------------------


def timed(action: Callable[[], T], repeat: int = 1) -> tuple[float, T]:
    start = time.perf_counter()
    for _ in range(repeat):
        result = action()
    return (time.perf_counter() - start) / repeat, result


def decision_rate(
    policy: CompiledPolicy, asks: list[tuple[Subject, ServiceRef, str, int | None]]
) -> tuple[float, float]:
    allowed = 0
    start = time.perf_counter()
    for subject, service, action, port in asks:
        allowed += policy.decide(subject, service, action, port, posture=POSTURE, now=NOW).allowed
    seconds = time.perf_counter() - start
    return len(asks) / seconds, allowed / max(1, len(asks))


def allowed_requests(
    policy: CompiledPolicy,
    subjects: list[Subject],
    inventory: Inventory,
    rng: random.Random,
    count: int,
) -> list[tuple[Subject, ServiceRef, str, int | None]]:
    """Requests each subject's view says are allowed (the common case at a ticket endpoint)."""
    pool: list[tuple[Subject, ServiceRef, str, int | None]] = []
    for subject in subjects:
        view = policy.view(subject, posture=POSTURE, now=NOW)
        for name, access in view.services.items():
            service = inventory.service(name)
            if service is None:
                continue
            for action, ports in access.ports.items():
                port = ports.ranges[0][0] if ports.ranges else None
                pool.append((subject, service, action, port))
    if not pool:
        return []
    return [rng.choice(pool) for _ in range(count)]


def write_results(args: argparse.Namespace, rows: list[tuple[str, str]]) -> None:
    command = "  ".join(["\n    .venv/bin/python -m bench.policy_scale", *sys.argv[1:]]).strip()
    cpu = _cpu_model()
    lines = [
        "# Policy engine at scale: recorded results",
        "",
        "Produced by `bench/policy_scale.py` (see its docstring for what each row measures).",
        "",
        "```",
        command,
        "```",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {cpu}; Python {platform.python_version()} ({platform.machine()})",
        f"- size: {args.identities:,} identities, {args.services:,} services, "
        f"{args.rules:,} rules; seed {args.seed}; one process, one thread",
        f"- load average before/after: {args.load_before} / {_load()} (the machine is shared;"
        " figures move with it)",
        "",
        "| measurement | result |",
        "|---|---|",
        *[f"| {label} | {value} |" for label, value in rows],
        "",
        "Reading the figures:",
        "",
        "- The workload: 500 team tags, 1,000 groups of 50 names plus a team (10% nest another),",
        "  1,000 host groups of 3 identities each binding 5 services, dial rules from 1-3",
        "  groups/teams/names to 1-4 services or attributes with port lists, 5% deny rules,",
        "  1% posture-gated, a few everyone-rules. A typical identity may dial 50-600 services.",
        "- Decisions go through the indexes (rules naming the subject intersected with rules",
        "  naming the service), so their cost follows those rules, not the 5,000.",
        "- Views are exact; peers of a host are every identity that may dial its services,",
        "  often thousands, which dominates host views. Peer sets are cached per policy and",
        "  inventory version as unions of shared per-selector sets (no per-service copies).",
        "- The full recompute includes filling those caches for a fresh policy. After a change,",
        "  `affected_identities(old, new, inventory)` names the views that can differ, and only",
        "  those are recomputed (the last rows).",
        "",
    ]
    args.out.write_text("\n".join(lines))


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
