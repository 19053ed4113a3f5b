"""The network-mode view at scale: what `/v1/view` costs a device with 1,000 or 5,000 peers.

Run from the repo root (no root, no network; SQLite in a temporary directory)::

    .venv/bin/python -m bench.view_scale                  # 1,000 and 5,000 peers
    .venv/bin/python -m bench.view_scale --peers 200 --repeat 2   # quick look

It makes a controller home, one host ``srv`` binding ``web`` and N devices tagged
``tag:cli`` allowed to dial it (each with overlay addresses and a Noise key), then times the
work of ``GET /v1/view`` for ``srv`` (filtered view with addresses, endpoints and reach, plus
one relay ticket per peer), cold (first call) and warm (median of the repeats), and counts the
SQL statements one warm view runs. Serialisation to JSON is left out: it is the same before
and after and says nothing about the controller's own work.

Why: a device's view lists every peer it may talk to; a view that costs a query and a
signature per peer is what limits how many devices one controller serves.
"""

from __future__ import annotations

import argparse
import base64
import inspect
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from umbranet.controller.home import init_home, load_home
from umbranet.controller.service import relay as relay_service
from umbranet.controller.service import views
from umbranet.controller.service.addresses import OverlaySettings, addresses_for
from umbranet.controller.service.policy import set_policy
from umbranet.controller.service.services import create_service
from umbranet.controller.store import Identity, Store

POLICY = """{
  "tagOwners": {"tag:cli": []},
  "rules": [
    {"action": "bind", "src": ["srv"], "dst": ["svc:web"]},
    {"action": "dial", "src": ["tag:cli"], "dst": ["svc:web"]},
  ],
}"""


def _key(i: int) -> str:
    return base64.b64encode(i.to_bytes(4, "big") * 8).decode()


def measure(peers: int, repeat: int) -> dict[str, Any]:
    """One network of ``peers`` devices; the figures of srv's view."""
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as home:
        init_home(home, now)
        loaded = load_home(home)
        try:
            return _measure(loaded, peers, repeat, now)
        finally:
            loaded.db.dispose()


def _measure(loaded: Any, peers: int, repeat: int, now: datetime) -> dict[str, Any]:
    overlay, domain = OverlaySettings(), loaded.authority.trust_domain
    with loaded.db.session() as session:
        store = Store(session)
        create_service(store, name="web", host_address="tcp://127.0.0.1:8080", actor="b", now=now)
        rows = [
            Identity(
                name=name,
                kind="device",
                spiffe_id=f"spiffe://{domain}/device/{name}",
                attributes=["tag:cli"] if name != "srv" else [],
                enabled=True,
                noise_public_key=_key(i + 1),
                created_at=now,
            )
            for i, name in enumerate(["srv", *(f"cli{n}" for n in range(peers))])
        ]
        session.add_all(rows)
        session.flush()
        addresses_for(store, rows, overlay, domain)
        set_policy(store, POLICY, actor="bench", now=now)
    # The API's cache lives as long as the controller; older code has none.
    takes_cache = "cache" in inspect.signature(relay_service.relay_tickets).parameters
    cache = relay_service.RelayTicketCache() if takes_cache else None  # type: ignore[attr-defined]

    def one() -> int:
        with loaded.db.session() as session:
            store = Store(session)
            srv = store.identity_by_name("srv")
            assert srv is not None
            view = views.view_of(store, srv, now=now, epoch=1, overlay=overlay, trust_domain=domain)
            extra = {"cache": cache} if takes_cache else {}
            tickets = relay_service.relay_tickets(
                loaded.authority,
                srv,
                [p.noise_public_key for p in view.peers],
                now=now,
                epoch=1,
                **extra,
            )
            assert len(view.peers) == peers and len(tickets) == peers
            return len(view.peers)

    started = time.perf_counter()
    one()
    cold = time.perf_counter() - started
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    sa.event.listen(loaded.db.engine, "before_cursor_execute", count)
    try:
        one()
    finally:
        sa.event.remove(loaded.db.engine, "before_cursor_execute", count)
    warm = []
    for _ in range(repeat):
        started = time.perf_counter()
        one()
        warm.append(time.perf_counter() - started)
    return {
        "peers": peers,
        "cold_ms": round(cold * 1000, 1),
        "warm_ms": round(statistics.median(warm) * 1000, 1),
        "queries": len(statements),
        "ticket_cache": takes_cache,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.view_scale", description=__doc__)
    p.add_argument("--peers", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--repeat", type=int, default=5, help="warm views timed (median)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    rows = [measure(n, max(1, args.repeat)) for n in args.peers]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"# view scale ({platform.python_version()}, {os.cpu_count()} CPUs)")
    print("| peers | cold ms | warm ms (median) | SQL statements (warm) | ticket cache |")
    print("|---|---|---|---|---|")
    for r in rows:
        cache = "yes" if r["ticket_cache"] else "no"
        print(f"| {r['peers']} | {r['cold_ms']} | {r['warm_ms']} | {r['queries']} | {cache} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
