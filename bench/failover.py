"""Failover and in-session dial figures for the SDK on loopback (issue 11, items 5 and 6).

- failover: the longest pause an application reading an echoed transfer sees when the router
  under its stream crashes (its links reset, as when the process is killed) and the stream
  moves to the other router; median of `--runs` (>= 5 for the report);
- path setup: three routers meshed through the controller's in-memory twin (the same
  `LinkGraph` the API serves); the direct link between the dialer's and the host's routers
  is cut and the time from the loss to the new routes installed at the dialer's router is
  read from its mesh shell (`Peers.statistics()["setup_ms"]`); median of `--runs`;
- revocation to close across 2 hops: SDK -> r1 -> r2 -> SDK, the host's grant re-checked
  and denied at r2 (`Router.apply_epoch`); the time until the dialer's read raises
  `StreamReset("revoked")`; median of `--runs`. The controller's side (the epoch event
  reaching the routers) is not in it: `tests/integration/test_mesh_ring_netns.py` prints
  the whole chain with real processes, and the HA rows measure the epoch fan-out;
- dial + first round trip: `ctx.dial(svc)` plus one byte echoed, with a full Noise XX
  handshake per dial, and opened inside the existing session with the byte riding as early
  data (0-RTT); medians of `--dials`.

In-process routers with real TLS on 127.0.0.1, one process, so the figures compare the two
ways of dialing and show the failover pause; `python -m bench` measures paths across
namespaces and carries the first three as its "mesh failover" rows (`measure`). Run:
`python -m bench.failover [--runs 5] [--dials 200] [--mib 16]`; every loop is bounded by its
count and every wait by a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from bench.mesh_twin import meshed, until
from umbranet.aio.runtime import run
from umbranet.router import Router, RouterConfig
from umbranet.router.peers import Peers
from umbranet.sdk import Context, Stream, StreamReset
from umbranet.testing import LocalNetwork

WAIT = 30.0


async def _echo(listener: Any) -> None:
    async def one(stream: Stream) -> None:
        try:
            while data := await stream.read(1 << 20):
                stream.write(data)
                await stream.drain()
            stream.write_eof()
        except ConnectionError:
            pass

    tasks: set[asyncio.Task[None]] = set()
    async for stream in listener:
        task = asyncio.get_running_loop().create_task(one(stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def _network() -> LocalNetwork:
    network = LocalNetwork()
    network.service("echo", dial=("client",), bind=("server",))
    return network


def _crash(router: Router) -> None:
    """Stop accepting and reset every link at once (what the kernel does for a killed
    process); the router object is left for its context manager to close."""
    router.stop_accepting()
    for link in list(router._links):
        if link.transport is not None:
            link.transport.abort()


async def failover_once(mib: int) -> float:
    network = _network()
    async with (
        Router(RouterConfig(network.identity("r1", kind="router"), port=0)) as r1,
        Router(RouterConfig(network.identity("r2", kind="router"), port=0)) as r2,
    ):
        network.routers.extend([r1.address, r2.address])
        host = Context(
            network.identity("web", attributes=("server",)), control=network.control, renew=False
        )
        client = Context(
            network.identity("alice", attributes=("client",)), control=network.control, renew=False
        )
        async with host, client:
            listener = await host.listen("echo").start()
            server = asyncio.get_running_loop().create_task(_echo(listener))
            stream = await client.dial("echo")
            size, chunk = mib << 20, 1 << 16
            payload = bytes(chunk)
            echoing = asyncio.Event()

            async def send() -> None:
                for offset in range(0, size, chunk):
                    stream.write(payload)
                    await stream.drain()
                    if offset == size // 3 // chunk * chunk:
                        # Only once the host's end is open too (an echo came back): a path
                        # lost before the host finished the handshake has no session to
                        # move, and in one process the dialer can be a window ahead of it.
                        await asyncio.wait_for(echoing.wait(), WAIT)
                        _crash(r1 if stream.get_extra_info("router") == "r1" else r2)
                stream.write_eof()

            sender = asyncio.get_running_loop().create_task(send())
            got, longest, last = 0, 0.0, time.perf_counter()
            while data := await asyncio.wait_for(stream.read(1 << 20), WAIT):
                echoing.set()
                now = time.perf_counter()
                longest = max(longest, now - last)
                last = now
                got += len(data)
            await sender
            server.cancel()
            if got != size or stream.get_extra_info("resumes") != 1:
                raise RuntimeError(f"failover run broken: {got} of {size} bytes")
            return longest


def _attached(network: LocalNetwork, name: str, attribute: str, router: Router) -> Context:
    identity = network.identity(name, attributes=(attribute,))
    return Context(identity, control=network.control, routers=(router.address,), renew=False)


async def _routed(*shells: Peers) -> None:
    for shell in shells:  # the hosts' routers first: their bindings are in the others' routes
        await asyncio.wait_for(shell.wait_reported(), WAIT)


async def setup_once() -> float:
    """Milliseconds from the loss of the r1-r3 link to r1's new routes (via r2)."""
    network = _network()
    async with meshed(network, ["r1", "r2", "r3"]) as (shells, twin):
        r1, _r2, r3 = (s.router for s in shells)
        host = _attached(network, "web", "server", r3)
        async with host:
            listener = await host.listen("echo").start()
            await _routed(shells[2], shells[1], shells[0])
            r3_id = r3.identity.spiffe_id
            twin.cut.add(frozenset((r1.identity.spiffe_id, r3_id)))  # and it stays cut
            shells[0].setup_ms = None
            r1.router_links()[r3_id].handle.abort()  # type: ignore[attr-defined]
            await until(lambda: shells[0].setup_ms is not None)
            took = shells[0].setup_ms
            await listener.close()
            assert took is not None
            return took


async def revocation_once() -> float:
    """Seconds from r2's re-check denying the host to the dialer's StreamReset."""
    network = _network()
    async with meshed(network, ["r1", "r2"]) as (shells, _twin):
        r1, r2 = (s.router for s in shells)
        host = _attached(network, "web", "server", r2)
        client = _attached(network, "alice", "client", r1)
        async with host, client:
            listener = await host.listen("echo").start()
            await _routed(shells[1], shells[0])
            stream = await asyncio.wait_for(client.dial("echo"), WAIT)
            stream.write(b"x")
            host_end = await asyncio.wait_for(listener.accept(), WAIT)
            await asyncio.wait_for(host_end.readexactly(1), WAIT)

            async def deny(grants: list[tuple[str, str, str]]) -> dict[int, str]:
                return {i: "revoked" for i, g in enumerate(grants) if g[0].endswith("/web")}

            started = time.perf_counter()
            await r2.apply_epoch(network.bump(), deny)
            try:
                await asyncio.wait_for(stream.read(), WAIT)
            except StreamReset as exc:
                if exc.code != "revoked":
                    raise
            else:
                raise RuntimeError("the stream ended without the revocation")
            took = time.perf_counter() - started
            await listener.close()
            return took


def measure(runs: int = 5, mib: int = 16) -> dict[str, Any]:
    """The "mesh failover" rows of `python -m bench`: each figure's runs and median (ms);
    a figure that fails keeps its error instead, so the rest of the report stands."""
    result: dict[str, Any] = {"runs": runs, "mib": mib}
    figures = (
        ("failover_pause", lambda: run(failover_once(mib)) * 1000),
        # The plain asyncio loop: uvloop's clock ticks in whole milliseconds, and the mesh
        # shell times the path setup with the loop's clock.
        ("path_setup", lambda: asyncio.run(setup_once())),
        ("revocation_close", lambda: run(revocation_once()) * 1000),
    )
    for name, once in figures:
        try:
            values = [round(once(), 2) for _ in range(runs)]
        except Exception as exc:  # one broken figure must not stop the others
            result[name] = {"error": repr(exc)[:300]}
            continue
        result[name] = {"ms": values, "median_ms": round(statistics.median(values), 2)}
    return result


async def dials(count: int) -> tuple[list[float], list[float]]:
    network = _network()
    async with Router(RouterConfig(network.identity("r1", kind="router"), port=0)) as r1:
        network.routers.append(r1.address)
        host = Context(
            network.identity("web", attributes=("server",)), control=network.control, renew=False
        )
        client = Context(
            network.identity("alice", attributes=("client",)), control=network.control, renew=False
        )
        async with host, client:
            listener = await host.listen("echo").start()
            server = asyncio.get_running_loop().create_task(_echo(listener))
            full: list[float] = []
            early: list[float] = []
            for i in range(2 * count + 1):
                in_session = i % 2 == 0 and i > 0
                if not in_session:
                    client._mover.sessions.forget("echo")  # the next dial runs Noise XX
                started = time.perf_counter()
                stream = await asyncio.wait_for(
                    client.dial("echo", early_data=b"x" if in_session else b""), WAIT
                )
                if not in_session:
                    stream.write(b"x")
                await asyncio.wait_for(stream.readexactly(1), WAIT)
                took = time.perf_counter() - started
                if i > 0:
                    (early if in_session else full).append(took)
                stream.write_eof()
                await asyncio.wait_for(stream.read(), WAIT)
            server.cancel()
            return full, early


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.failover")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dials", type=int, default=200)
    parser.add_argument("--mib", type=int, default=16)
    args = parser.parse_args(argv)
    pauses = [run(failover_once(args.mib)) for _ in range(args.runs)]
    full, early = run(dials(args.dials))  # uvloop, as the shells run
    print(
        f"failover pause (router crash, {args.mib} MiB echo): median "
        f"{statistics.median(pauses) * 1000:.1f} ms of {args.runs} runs "
        f"({', '.join(f'{p * 1000:.0f}' for p in pauses)} ms)"
    )
    f, e = statistics.median(full), statistics.median(early)
    print(f"dial + first round trip, Noise XX: median {f * 1e6:.0f} us ({len(full)} dials)")
    print(
        f"dial + first round trip, in session (0-RTT): median {e * 1e6:.0f} us "
        f"({len(early)} dials); ratio {e / f:.2f}"
    )


if __name__ == "__main__":
    main()
