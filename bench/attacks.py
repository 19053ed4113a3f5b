"""Attacks as benchmarks: what a hostile enrolled client costs a router, and its bystanders.

- window attack (issue 9, item 6): a dialer opens 64 circuits with the largest window the
  router honours, then stops reading its link; a host pushes data into all of them. Reported:
  the router's RSS growth (its own process), against the stated bound of 64 MiB.
- control-frame flood (item 7): a client floods the router with forged-ticket DIALs (each a
  signature check if the router let it) and malformed frames, reconnecting when closed, while
  a bystander does 64-byte round trips through the same router. Reported: the bystander's
  p50/p99 with and without the flood, and how the router refused the flood.

The router runs in a forked child so its RSS is its own; everything is on loopback and every
loop is bounded in time. One run prints a small table and writes JSON next to `--out`.

    .venv/bin/python -m bench.attacks --seconds 10 --out bench/ATTACKS.md
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

from umbranet.aio.runtime import run
from umbranet.pki.tickets import Action
from umbranet.proto.circuit import Circuit
from umbranet.proto.e2e import DialerHandshake
from umbranet.router import Router, RouterConfig
from umbranet.router.quotas import SwitchLimits
from umbranet.sdk import Context
from umbranet.testing import LocalNetwork
from umbranet.testing.rawlink import RawLink
from umbranet.wire import FrameType, encode_control

MiB = 1024 * 1024


def _serve_router(network: LocalNetwork, port: Any) -> None:
    async def main() -> None:
        identity = network.identity("r1", kind="router")
        async with Router(RouterConfig(identity, port=0)) as router:
            port.value = int(router.address.rsplit(":", 1)[1])
            await asyncio.sleep(3600)

    run(main())


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _context(network: LocalNetwork, name: str, attribute: str) -> Context:
    identity = network.identity(name, attributes=(attribute,))
    return Context(identity, control=network.control, renew=False, report_posture=False)


async def _push_forever(listener: Any, stop: asyncio.Event) -> None:
    chunk = b"x" * 65536

    async def push(stream: Any) -> None:
        try:
            while not stop.is_set():
                stream.write(chunk)
                await stream.drain()
        except Exception:  # reset by the router's budget: that circuit is done
            return

    tasks = set()
    async for stream in listener:
        tasks.add(asyncio.get_running_loop().create_task(push(stream)))


async def window_attack(network: LocalNetwork, router_pid: int, seconds: float) -> dict[str, Any]:
    stop = asyncio.Event()
    host, mallory = _context(network, "pusher", "server"), _context(network, "mallory", "client")
    async with host, mallory:
        listener = await host.listen("source").start()
        pusher = asyncio.get_running_loop().create_task(_push_forever(listener, stop))
        await asyncio.sleep(0.5)
        baseline = _rss_kib(router_pid)
        grant = await mallory.ticket("source", Action.DIAL)
        connection = await mallory.connection(grant.routers[0])
        window = SwitchLimits().max_window
        for _ in range(64):
            handshake = DialerHandshake("source", grant.ticket, mallory.credentials())
            make = functools.partial(
                Circuit.dial, service="source", handshake=handshake, window=window
            )
            _, opened = connection.open_circuit("source", make)
            await opened
        link = connection._link
        assert link is not None and link.transport is not None
        link.transport.pause_reading()  # from now on mallory reads nothing at all
        peak = baseline
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            peak = max(peak, _rss_kib(router_pid))
        stop.set()
        pusher.cancel()
        link.transport.resume_reading()
    return {
        "circuits": 64,
        "window_mib": window / MiB,
        "promised_mib": 64 * window / MiB,
        "router_rss_baseline_mib": round(baseline / 1024, 1),
        "router_rss_peak_mib": round(peak / 1024, 1),
        "router_rss_growth_mib": round((peak - baseline) / 1024, 1),
        "bound_mib": 64,
    }


async def _round_trips(client: Context, seconds: float) -> list[float]:
    stream = await client.dial("echo")
    times: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(times) < 200_000:
        start = time.perf_counter()
        stream.write(b"p" * 64)
        await asyncio.wait_for(stream.readexactly(64), 30)
        times.append((time.perf_counter() - start) * 1e6)
    stream.close()
    return times


async def _echo(listener: Any) -> None:
    async def echo(stream: Any) -> None:
        try:
            while data := await stream.read(65536):
                stream.write(data)
                await stream.drain()
        except Exception:
            return

    tasks = set()
    async for stream in listener:
        tasks.add(asyncio.get_running_loop().create_task(echo(stream)))


def _flood_process(network: LocalNetwork, address: str, seconds: float, out: Any) -> None:
    """The flooder runs in a process of its own: in the bystander's process its tight loop
    would starve the bystander's own event loop, not the router's."""

    async def main() -> dict[str, int]:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        return await _flood(network, address, stop)

    result = run(main())
    out.put(result)


async def _flood(network: LocalNetwork, address: str, stop: asyncio.Event) -> dict[str, int]:
    identity = network.identity("flooder", attributes=("client",))
    forged = encode_control(
        {"ticket": "ut1.forged.forged", "service": "echo", "window": 70000}, b"m1"
    )
    sent = links = 0
    circuit = 1
    while not stop.is_set():
        try:
            async with await RawLink.open(address, identity) as raw:
                links += 1
                await raw.hello()
                while not stop.is_set():
                    for _ in range(500):
                        raw.send(FrameType.DIAL, circuit, forged)
                        circuit = (circuit + 2) % (1 << 31) or 1
                    sent += 500
                    await asyncio.wait_for(raw.drain(), 1.0)
                    await asyncio.sleep(0)
                    if raw._writer.transport.is_closing():  # the router closed it: reconnect
                        break
        except Exception:  # closed by the router (rate_limited): come back
            await asyncio.sleep(0.01)
    return {"frames_sent": sent, "links_opened": links}


async def frame_flood(network: LocalNetwork, address: str, seconds: float) -> dict[str, Any]:
    host, bystander = _context(network, "web", "server"), _context(network, "alice", "client")
    async with host, bystander:
        listener = await host.listen("echo").start()
        server = asyncio.get_running_loop().create_task(_echo(listener))
        quiet = await _round_trips(bystander, seconds)
        forked = multiprocessing.get_context("fork")
        results: Any = forked.Queue()
        flooder = forked.Process(
            target=_flood_process, args=(network, address, seconds + 1.0, results), daemon=True
        )
        flooder.start()
        await asyncio.sleep(0.5)
        loud = await _round_trips(bystander, seconds)
        flood = await asyncio.to_thread(results.get, True, 30)
        flooder.join(5)
        server.cancel()

    def pct(values: list[float], q: float) -> float:
        return round(statistics.quantiles(values, n=100)[int(q) - 1], 1)

    return {
        "bystander_rr_p50_us_quiet": pct(quiet, 50),
        "bystander_rr_p99_us_quiet": pct(quiet, 99),
        "bystander_rr_p50_us_flood": pct(loud, 50),
        "bystander_rr_p99_us_flood": pct(loud, 99),
        "bystander_round_trips_flood": len(loud),
        **flood,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("bench/ATTACKS.md"))
    args = parser.parse_args(argv)
    network = LocalNetwork()
    network.service("echo", dial=("client",), bind=("server",))
    network.service("source", dial=("client",), bind=("server",))
    port = multiprocessing.get_context("fork").Value("i", 0)
    child = multiprocessing.get_context("fork").Process(
        target=_serve_router, args=(network, port), daemon=True
    )
    child.start()
    try:
        for _ in range(100):
            if port.value:
                break
            time.sleep(0.1)
        address = f"127.0.0.1:{port.value}"
        network.routers.append(address)
        assert child.pid is not None
        results = {
            "window_attack": run(window_attack(network, child.pid, args.seconds)),
            "frame_flood": run(frame_flood(network, address, args.seconds)),
        }
    finally:
        child.terminate()
        child.join(5)
    _report(results, args)
    return 0


def _report(results: dict[str, Any], args: argparse.Namespace) -> None:
    w, f = results["window_attack"], results["frame_flood"]
    lines = [
        "# Attacks against one router (issue 9, items 6 and 7)",
        "",
        f"Generated by `python -m bench.attacks --seconds {args.seconds:g}` on "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; one run, loopback, router in "
        "its own process, default limits (`router/quotas.py`). The machine is shared: "
        "latencies are noisy, the memory figure is a bound.",
        "",
        "| attack | figure |",
        "|---|---|",
        f"| window attack: {w['circuits']} circuits x {w['window_mib']:g} MiB windows "
        f"({w['promised_mib']:g} MiB promised), reader stopped | router RSS "
        f"{w['router_rss_baseline_mib']} -> {w['router_rss_peak_mib']} MiB "
        f"(+{w['router_rss_growth_mib']} MiB; bound {w['bound_mib']} MiB) |",
        f"| forged-ticket DIAL flood ({f['frames_sent']:,} frames written by the flooder on "
        f"{f['links_opened']} link(s); the router reads a link only while it drains the "
        "answers, and checks at most 500 tickets/s per link and identity) "
        f"| bystander 64 B RR p50/p99: quiet {f['bystander_rr_p50_us_quiet']}/"
        f"{f['bystander_rr_p99_us_quiet']} us, under flood {f['bystander_rr_p50_us_flood']}/"
        f"{f['bystander_rr_p99_us_flood']} us |",
        "",
    ]
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
