"""The controller's scale rows on PostgreSQL (or SQLite), with one and two replicas.

    .venv/bin/python -m bench.scale_pg                     # full size, PostgreSQL
    .venv/bin/python -m bench.scale_pg --db sqlite         # the same rows on SQLite (1 replica)
    .venv/bin/python -m bench.scale_pg --smoke             # tiny sizes: does it still run?

No root and no network namespaces: the replicas are `umbra controller run` processes on
loopback; PostgreSQL is a throwaway cluster made as the tests make theirs
(`tests/pg_harness.py`: ``initdb`` in a temp dir, loopback only, ``fsync=off``,
``synchronous_commit=off``; so commits cost less than on a durable server). Rows:

- view: `GET /v1/view` through the API for one dialer while the database holds
  `--identities` identities and `--services` services (bulk-inserted) and a policy of
  `--rules` rules is in force: the synthetic network of `bench.policy_scale` (teams as tags,
  groups, hosts, deny and posture rules), saved through ``PUT /v1/policy``; the dialer has
  the tag of one team. Median and p99 of sequential calls, after one warm-up call (the
  controller builds its inventory once per network change). ``--view-mode attributes``
  measures the interim attribute rule instead (no policy: every view reads every identity,
  so keep `--identities` small).
- enrollments/s and tickets/s at 1 replica and, on PostgreSQL, 2: enrollment tokens are
  minted on each replica in turn and ticket clients are spread over the replicas (each
  client's identity names its replica); `--concurrency` calls in flight.
- epoch fan-out (PostgreSQL): an admin follows replica B's event stream while identities
  are disabled one after the other through replica A; from the start of each disable call
  to its `epoch` event on B; median, p99 and max over `--bumps`.

The load comes from this one asyncio process: at high rates it can be the bottleneck (its
CPU seconds are printed beside the replicas'). Output: a table, and ``--json FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench import procfs
from bench.report import load_json, write_markdown
from bench.report_controller import record
from umbranet.client.controller import ControllerClient, ControllerError
from umbranet.controller.store import Database
from umbranet.controller.store.models import Identity, Service
from umbranet.pki import IdentityFile

__all__ = ["main"]

REPO = Path(__file__).resolve().parent.parent
TEAMS = 200
HOST_GROUPS = 1000
TRUST_DOMAIN = "scale.umbra"


@dataclasses.dataclass(frozen=True)
class Sizes:
    identities: int = 100_000
    services: int = 5_000
    views: int = 200
    enrollments: int = 200
    tickets: int = 2_000
    concurrency: int = 8
    bumps: int = 200
    rules: int = 5_000

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(2_000, 200, 20, 10, 100, 4, 100, 200)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_pg", description=__doc__)
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes")
    for field in dataclasses.fields(Sizes):
        parser.add_argument(f"--{field.name}", type=int, default=None)
    parser.add_argument("--view-mode", choices=("policy", "attributes"), default="policy")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--record",
        action="store_true",
        help="keep the figures as this engine's in bench/CONTROLLER_SCALE.json and re-render "
        "bench/RESULTS.md from bench/RESULTS.json",
    )
    args = parser.parse_args(argv)
    sizes = Sizes.smoke() if args.smoke else Sizes()
    sizes = dataclasses.replace(
        sizes, **{f.name: v for f in dataclasses.fields(Sizes) if (v := getattr(args, f.name))}
    )
    with tempfile.TemporaryDirectory(prefix="umbra-scale-") as tmp, _database(
        args.db, Path(tmp)
    ) as url:  # fmt: skip
        result = _run(args.db, url, Path(tmp), sizes, args.view_mode)
    _print(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.record:
        record(result)
        bench_dir = Path(__file__).resolve().parent
        write_markdown(load_json(bench_dir / "RESULTS.json"), bench_dir / "RESULTS.md")
    return 0 if not result["errors"] else 1


@contextmanager
def _database(engine: str, tmp: Path) -> Iterator[str | None]:
    """A fresh database URL (None: SQLite in the first home)."""
    if engine == "sqlite":
        yield None
        return
    sys.path.insert(0, str(REPO))
    from tests.pg_harness import start_cluster, stop_cluster

    cluster, why, pg_tmp = start_cluster()
    try:
        if cluster is None:
            raise SystemExit(f"PostgreSQL cannot run here: {why}")
        yield cluster.url(cluster.create_database())
    finally:
        if cluster is not None:
            stop_cluster(cluster)
        if pg_tmp is not None:
            shutil.rmtree(pg_tmp, ignore_errors=True)


class _Replicas:
    """`umbra controller run` processes, stopped with SIGTERM (then SIGKILL) by PID."""

    def __init__(self, tmp: Path, url: str | None) -> None:
        self.tmp = tmp
        self.db_url = url
        self.env = {**os.environ, "UMBRA_KEK_FILE": str(tmp / "kek"), "PYTHONUNBUFFERED": "1"}
        self.homes: list[Path] = []
        self.urls: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def umbra(self, home: Path, *args: str) -> None:
        argv = [sys.executable, "-m", "umbranet.cli.main", "--home", str(home), *args]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, env=self.env, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"umbra {' '.join(args[:2])}: {done.stderr.strip()[-400:]}")

    def make(self, count: int) -> None:
        for index in range(count):
            home, port = self.tmp / f"replica{index}", _free_port()
            verb = ["init", "--trust-domain", TRUST_DOMAIN] if index == 0 else ["join"]
            db = ["--db", self.db_url] if self.db_url else []
            kek = ["--kek-file", str(self.tmp / "kek")] if self.db_url else []
            self.umbra(home, "controller", *verb, *db, *kek, "--address", f"127.0.0.1:{port}")
            self.homes.append(home)
            self.urls.append(f"https://127.0.0.1:{port}")

    def start(self, count: int) -> None:
        for home, url in zip(self.homes[:count], self.urls[:count], strict=True):
            argv = [sys.executable, "-m", "umbranet.cli.main", "--home", str(home)]
            with (self.tmp / f"{home.name}.log").open("wb") as log:
                process = subprocess.Popen(
                    [*argv, "controller", "run"], stdout=log, stderr=subprocess.STDOUT, env=self.env
                )
            self.processes.append(process)
            _wait_ready(url, process)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.processes.clear()

    def log_tails(self, count: int, lines: int = 15) -> list[str]:
        """The last lines each replica wrote: why a row failed, kept before tmp goes away."""
        tails = []
        for home in self.homes[:count]:
            text = (self.tmp / f"{home.name}.log").read_text(errors="replace").splitlines()
            tails.append(f"{home.name} log: " + " | ".join(text[-lines:])[-3000:])
        return tails

    def db_url_of_first(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.homes[0] / 'controller' / 'umbra.db').resolve()}"

    def cpu_seconds(self) -> float:
        return procfs.cpu_seconds([p.pid for p in self.processes])


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the controller at {url} exited at start")
        try:
            if httpx.get(f"{url}/readyz", verify=False, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the controller at {url} did not become ready in 60 s")


def _world(sizes: Sizes, mode: str) -> tuple[dict[str, list[str]], dict[str, list[str]], str]:
    """(identity -> tags, service -> attributes, policy text or "") of the network."""
    if mode == "policy":
        from bench.policy_scale import build_world

        world = build_world(random.Random(1), sizes.identities, sizes.services, sizes.rules)
        inventory = world["inventory"]
        identities = {s.name: sorted(s.tags) for s in inventory.identities()}
        services = {r.name: sorted(r.attributes) for r in inventory.services()}
        return identities, services, str(world["text"])
    identities = {}
    for i in range(sizes.identities):
        identities[f"u{i}"] = [f"team{i % TEAMS}", *([f"hosts{i // 3}"] if i < 3000 else [])]
    services = {
        f"s{j}": [f"team{j % TEAMS}", f"hosts{j % HOST_GROUPS}"] for j in range(sizes.services)
    }
    return identities, services, ""


def _populate(db_url: str, world: tuple[dict[str, list[str]], dict[str, list[str]], str]) -> float:
    """Bulk-insert the identities and services (no certificates: only views read them)."""
    started = time.monotonic()
    now = datetime.now(UTC)
    identities, services, policy = world
    db = Database.open(db_url, migrate_schema=False)
    try:
        names = list(identities)
        for first in range(0, len(names), 5_000):
            rows = [
                {"name": name, "kind": "workload", "attributes": identities[name],
                 "spiffe_id": f"spiffe://{TRUST_DOMAIN}/workload/{name}", "created_at": now,
                 "noise_public_key": None, "enabled": True}
                for name in names[first : first + 5_000]
            ]  # fmt: skip
            with db.session() as session:
                session.execute(sa.insert(Identity), rows)
        # Attribute mode: dial by team, host by host group; policy mode: the policy decides.
        rows = [
            {"name": name, "dial_attributes": attrs if policy else attrs[:1],
             "bind_attributes": [] if policy else attrs[1:], "host_address": None,
             "intercepts": [], "created_at": now}
            for name, attrs in services.items()
        ]  # fmt: skip
        with db.session() as session:
            session.execute(sa.insert(Service), rows)
    finally:
        db.dispose()
    return time.monotonic() - started


def _run(engine: str, url: str | None, tmp: Path, sizes: Sizes, mode: str) -> dict[str, Any]:
    result: dict[str, Any] = {
        "engine": engine, "sizes": dataclasses.asdict(sizes), "errors": [], "view_mode": mode,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    counts = [1, 2] if engine == "postgresql" else [1]
    replicas = _Replicas(tmp, url)
    try:
        replicas.make(max(counts))
        world = _world(sizes, mode)
        result["populate_s"] = round(_populate(replicas.db_url_of_first(), world), 1)
        admin = IdentityFile.load(replicas.homes[0] / "admin.json")
        for count in counts:
            replicas.start(count)
            try:
                if count == 1 and world[2]:
                    result["policy_save_s"] = round(asyncio.run(_save_policy(admin, world[2])), 1)
                row = asyncio.run(_controller_rows(admin, replicas, count, sizes))
                result[f"replicas_{count}"] = row
                if count == max(counts) and count > 1:
                    result["fanout"] = asyncio.run(_fanout(admin, replicas, sizes))
            except Exception as exc:  # one broken row must not lose the others
                result["errors"].append(f"{count} replica(s): {exc!r}"[:400])
                result["errors"].extend(replicas.log_tails(count))
            finally:
                replicas.stop()
    except Exception as exc:
        result["errors"].append(f"setup: {exc!r}"[:400])
    finally:
        replicas.stop()
    return result


async def _save_policy(admin: IdentityFile, text: str) -> float:
    started = time.monotonic()
    async with ControllerClient(admin, request_timeout=900) as client:
        await client.set_policy(text, "bench.scale_pg")
    return time.monotonic() - started


async def _controller_rows(
    admin: IdentityFile, replicas: _Replicas, count: int, sizes: Sizes
) -> dict[str, Any]:
    urls = replicas.urls[:count]
    admins = [dataclasses.replace(admin, controller_url=u) for u in urls]
    tag = os.urandom(3).hex()
    errors: list[str] = []
    tokens: list[str] = []
    for i in range(sizes.enrollments + 1):
        async with ControllerClient(admins[i % count]) as client:
            made = await client.create_identity(f"e{tag}{i}", kind="workload", attributes=["team0"])
            tokens.append(made.enrollment_token)
    probe = await ControllerClient.enroll(tokens.pop())
    row: dict[str, Any] = {"replicas": count}
    # Each replica builds its inventory on its first view: timed apart (a cold replica's
    # first answers), and done before the rows below so their clients find it warm.
    cold = []
    for url in urls:
        started = time.monotonic()
        async with ControllerClient(
            dataclasses.replace(probe, controller_url=url), request_timeout=600
        ) as client:
            view = await client.view()
            await client.me()
        cold.append(round(time.monotonic() - started, 2))
    row["cold_view_s"] = cold
    async with ControllerClient(probe, request_timeout=600) as client:
        samples = []
        for _ in range(5):
            started = time.monotonic()
            await client.me()
            samples.append((time.monotonic() - started) * 1000)
    row["me_ms"] = round(statistics.median(samples), 1)
    service = next((n for n, a in sorted(view["services"].items()) if "dial" in a), None)
    if service is None:
        raise RuntimeError("the probe identity may dial no service")
    if count == 1:
        row["view"] = await _views(probe, sizes.views)
    sem = asyncio.Semaphore(sizes.concurrency)

    async def enroll(token: str) -> bool:
        async with sem:
            try:
                await ControllerClient.enroll(token)
            except (ControllerError, OSError) as exc:
                errors.append(f"enroll: {exc!r}"[:200])
                return False
            return True

    cpu0, started = replicas.cpu_seconds(), time.monotonic()
    enrolled = sum(await asyncio.gather(*(enroll(t) for t in tokens)))
    seconds = time.monotonic() - started
    row["enrollments_per_s"] = round(enrolled / seconds, 1)
    row["enroll_controller_cpu_s_per_op"] = round((replicas.cpu_seconds() - cpu0) / enrolled, 4)

    share = [sizes.tickets // sizes.concurrency] * sizes.concurrency
    ready = asyncio.Event()

    async def tickets(worker: int, n: int) -> int:
        mine = dataclasses.replace(probe, controller_url=urls[worker % count])
        done = 0
        async with ControllerClient(mine) as client:
            await client.me()  # the TLS session is up before the clock starts
            await ready.wait()
            for _ in range(n):
                try:
                    await client.ticket(service, "dial")
                    done += 1
                except ControllerError as exc:
                    errors.append(f"ticket: {exc!r}"[:200])
        return done

    workers = [asyncio.ensure_future(tickets(w, n)) for w, n in enumerate(share)]
    await asyncio.sleep(1.0)
    cpu0, client0, started = replicas.cpu_seconds(), time.process_time(), time.monotonic()
    ready.set()
    granted = sum(await asyncio.gather(*workers))
    seconds = time.monotonic() - started
    row["tickets_per_s"] = round(granted / seconds, 1)
    row["ticket_controller_cpu_s_per_op"] = round((replicas.cpu_seconds() - cpu0) / granted, 5)
    row["ticket_client_cpu_pct"] = round(100 * (time.process_time() - client0) / seconds, 1)
    row["error_count"], row["errors"] = len(errors), errors[:3]
    return row


async def _views(probe: IdentityFile, count: int) -> dict[str, Any]:
    samples = []
    async with ControllerClient(probe, request_timeout=600) as client:
        view = await client.view()  # warm: caches, TLS session
        for _ in range(count):
            started = time.perf_counter()
            await client.view()
            samples.append((time.perf_counter() - started) * 1000)
    return {
        "median_ms": round(statistics.median(samples), 2),
        "p99_ms": round(_p99(samples), 2),
        "services": len(view.get("services", {})),
        "peers": len(view.get("peers", [])),
        "calls": count,
    }


async def _fanout(admin: IdentityFile, replicas: _Replicas, sizes: Sizes) -> dict[str, Any]:
    on_a = dataclasses.replace(admin, controller_url=replicas.urls[0])
    on_b = dataclasses.replace(admin, controller_url=replicas.urls[1])
    samples: list[float] = []
    async with ControllerClient(on_a) as a, ControllerClient(on_b) as b:
        stream = b.events()
        name, _hello = await asyncio.wait_for(anext(stream), 10)
        for i in range(sizes.bumps):
            started = time.perf_counter()
            await a.disable_identity(f"u{i}")
            while True:
                name, data = await asyncio.wait_for(anext(stream), 10)
                if name == "epoch" and data.get("reason") == f"identity u{i} disabled":
                    break
            samples.append((time.perf_counter() - started) * 1000)
        await stream.aclose()
    return {
        "median_ms": round(statistics.median(samples), 2),
        "p99_ms": round(_p99(samples), 2),
        "max_ms": round(max(samples), 2),
        "bumps": len(samples),
        "measured": "start of POST /v1/identities/NAME/disable on A to the epoch event on B",
    }


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _print(result: dict[str, Any]) -> None:
    sizes = result["sizes"]
    print(f"controller scale on {result['engine']} ({result['date']})")
    print(f"  {sizes['identities']:,} identities, {sizes['services']:,} services", end="")
    print(f" (bulk insert {result.get('populate_s', '?')} s)", end="")
    if "policy_save_s" in result:
        print(f", a policy of {sizes['rules']:,} rules (saved in {result['policy_save_s']} s)")
    else:
        print(", attribute rules (no policy)")
    for key in ("replicas_1", "replicas_2"):
        row = result.get(key)
        if not row:
            continue
        if "view" in row:
            view = row["view"]
            print(
                f"  GET /v1/view: median {view['median_ms']} ms, p99 {view['p99_ms']} ms "
                f"({view['services']} services, {view['peers']} peers in it)"
            )
        print(
            f"  {row['replicas']} replica(s): {row['enrollments_per_s']} enrollments/s, "
            f"{row['tickets_per_s']} tickets/s (load client at {row['ticket_client_cpu_pct']}% "
            f"of a core; errors {row['error_count']}); first view + me on each cold replica: "
            f"{', '.join(f'{c} s' for c in row['cold_view_s'])}; GET /v1/me {row['me_ms']} ms"
        )
    fanout = result.get("fanout")
    if fanout:
        print(
            f"  epoch fan-out A -> B: median {fanout['median_ms']} ms, p99 {fanout['p99_ms']} ms,"
            f" max {fanout['max_ms']} ms over {fanout['bumps']} bumps"
        )
    for error in result["errors"]:
        print(f"  ERROR {error}")


if __name__ == "__main__":
    raise SystemExit(main())
