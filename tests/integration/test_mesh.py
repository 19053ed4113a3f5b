"""Routers linked by their mesh shell (`router/peers.py`) over real mutual TLS on loopback:
SDK -> r1 -> r2 -> SDK, the path before and after a router link is cut, revocation across
two hops. The controller is its in-memory twin: the same `LinkGraph` the API serves."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bench.mesh_twin import meshed as _mesh
from bench.mesh_twin import until as _until
from tests.conftest import echo_forever, free_port
from tests.integration.mesh_loopback import pinned, start_router2
from umbranet.controller.service.links import MeshPolicy
from umbranet.quickstart import Quickstart
from umbranet.router import Router, RouterConfig
from umbranet.router.peers import Peers
from umbranet.sdk import Context, DialError, StreamReset, UmbraError
from umbranet.testing import LocalNetwork

BOUND = 30.0  # every wait below is bounded by this (a deadline, not a timing assertion)


def _context(network: LocalNetwork, name: str, attribute: str, router: Router) -> Context:
    """An endpoint attached to `router` only."""
    identity = network.identity(name, attributes=(attribute,))
    return Context(identity, control=network.control, routers=(router.address,), renew=False)


async def _routed(*shells: Peers) -> None:
    """Every router reported (hosts' routers first) and installed what came back."""
    for shell in shells:
        await asyncio.wait_for(shell.wait_reported(), BOUND)


def _path(shells: list[Peers], before: dict[str, int]) -> list[str]:
    """The routers that saw a DIAL since `before` (each router's `dials` counter)."""
    return [
        s.router.name
        for s in shells
        if s.router.switch.counters["dials"] > before.get(s.router.name, 0)
    ]


def _dials(shells: list[Peers]) -> dict[str, int]:
    return {s.router.name: s.router.switch.counters["dials"] for s in shells}


async def _echo(client: Context, payload: bytes) -> bytes:
    stream = await client.dial("echo")
    stream.write(payload)
    stream.write_eof()
    data = await asyncio.wait_for(stream.read(), BOUND)
    return data


def test_two_routers_link_themselves_and_echo_crosses_both(network: LocalNetwork, arun) -> None:
    async def main() -> tuple[bytes, bytes, list[str], dict[str, object]]:
        async with _mesh(network, ["r1", "r2"]) as (shells, _twin):
            r1, r2 = (s.router for s in shells)
            host = _context(network, "web", "server", r2)
            client = _context(network, "alice", "client", r1)
            async with host, client:
                listener = await host.listen("echo").start()
                server = asyncio.get_running_loop().create_task(echo_forever(listener))
                await _routed(shells[1], shells[0])
                payload = bytes(range(256)) * 4000
                echoed = await _echo(client, payload)
                path = _path(shells, {})
                server.cancel()
                await listener.close()
                return payload, echoed, path, shells[0].statistics()

    payload, echoed, path, stats = arun(main())
    assert echoed == payload
    assert path == ["r1", "r2"]
    # The lower SPIFFE ID dialed; exactly one link per pair.
    assert stats["links"] == ["spiffe://test.umbra/router/r2"]
    assert stats["dialing"] == ["spiffe://test.umbra/router/r2"]
    print(f"\npath: alice -> {' -> '.join(path)} -> web")


def test_cutting_the_direct_link_moves_the_next_dial_to_the_other_path(
    network: LocalNetwork, arun
) -> None:
    async def main() -> tuple[list[str], str, list[str], bytes]:
        async with _mesh(network, ["r1", "r2", "r3"]) as (shells, twin):
            r1, _r2, r3 = (s.router for s in shells)
            host = _context(network, "web", "server", r3)
            client = _context(network, "alice", "client", r1)
            async with host, client:
                listener = await host.listen("echo").start()
                server = asyncio.get_running_loop().create_task(echo_forever(listener))
                await _routed(shells[2], shells[1], shells[0])
                held = await client.dial("echo")
                held.write(b"before")
                assert await asyncio.wait_for(held.readexactly(6), BOUND) == b"before"
                before = _path(shells, {})

                # r1 and r3 lose each other: the link breaks and cannot be dialed again.
                r3_id = r3.identity.spiffe_id
                twin.cut.add(frozenset((r1.identity.spiffe_id, r3_id)))
                direct = r1.router_links()[r3_id].handle
                direct.abort()  # type: ignore[attr-defined]
                # The held stream pauses and its session moves to r1-r2-r3 once routed.
                held.write(b"during the cut")
                await _until(lambda: r3_id not in r1.router_links())
                await _routed(shells[2], shells[1], shells[0])
                # The loss was a change: the report it caused timed the path setup.
                setup_ms = shells[0].statistics()["setup_ms"]
                assert isinstance(setup_ms, float) and setup_ms >= 0
                print(f"\npath setup after the cut: {setup_ms:.1f} ms at r1")
                during = await asyncio.wait_for(held.readexactly(14), BOUND)
                assert during == b"during the cut"

                counts = _dials(shells)
                payload = b"after the cut " * 5000
                echoed = await _echo(client, payload)
                after = _path(shells, counts)
                assert echoed == payload
                server.cancel()
                await listener.close()
                return before, held.get_extra_info("resumes"), after, echoed

    before, moves, after, _ = arun(main())
    assert before == ["r1", "r3"]
    assert moves == 1
    assert after == ["r1", "r2", "r3"]
    print(f"\npath before the cut: {before}; after: {after}")


@pytest.mark.parametrize("at", ["r1", "r2"])
def test_revocation_at_either_router_of_a_two_hop_path_closes_the_dialers_stream(
    network: LocalNetwork, arun, at: str
) -> None:
    async def main() -> tuple[str, str]:
        async with _mesh(network, ["r1", "r2"]) as (shells, _twin):
            r1, r2 = (s.router for s in shells)
            host = _context(network, "web", "server", r2)
            client = _context(network, "alice", "client", r1)
            async with host, client:
                listener = await host.listen("echo").start()
                await _routed(shells[1], shells[0])
                stream = await client.dial("echo")
                stream.write(b"x")
                host_end = await asyncio.wait_for(listener.accept(), BOUND)
                assert await asyncio.wait_for(host_end.readexactly(1), BOUND) == b"x"
                # The dialer's grant lives at r1, the host's at r2 (endpoint links only).
                holder = "alice" if at == "r1" else "web"

                async def recheck(grants: list[tuple[str, str, str]]) -> dict[int, str]:
                    return {
                        i: f"{holder} lost access"
                        for i, (identity, _service, _action) in enumerate(grants)
                        if identity.endswith(f"/{holder}")
                    }

                router = r1 if at == "r1" else r2
                closed = await router.apply_epoch(network.bump(), recheck)
                assert closed >= 1
                with pytest.raises(StreamReset) as dialer_side:
                    await asyncio.wait_for(stream.read(), BOUND)
                with pytest.raises(StreamReset):
                    await asyncio.wait_for(host_end.read(), BOUND)
                await listener.close()
                return dialer_side.value.code, dialer_side.value.reason

    code, reason = arun(main())
    assert code == "revoked"
    assert "lost access" in reason


def test_a_dropped_router_link_is_dialed_again_and_carries_dials_again(
    network: LocalNetwork, arun
) -> None:
    async def main() -> tuple[int, int, bytes]:
        async with _mesh(network, ["r1", "r2"]) as (shells, _twin):
            r1, r2 = (s.router for s in shells)
            host = _context(network, "web", "server", r2)
            client = _context(network, "alice", "client", r1)
            async with host, client:
                listener = await host.listen("echo").start()
                server = asyncio.get_running_loop().create_task(echo_forever(listener))
                await _routed(shells[1], shells[0])
                first = r1.router_links()[r2.identity.spiffe_id]
                first.handle.abort()  # type: ignore[attr-defined]  # the carrier breaks
                await _until(lambda: r2.identity.spiffe_id not in r1.router_links())
                await _until(lambda: r2.identity.spiffe_id in r1.router_links())
                assert r1.router_links()[r2.identity.spiffe_id] is not first
                await _routed(shells[1], shells[0])
                echoed = await _echo(client, b"again" * 1000)
                server.cancel()
                await listener.close()
                counters = shells[0].counters
                return counters["dialed"], counters["lost"], echoed

    dialed, lost, echoed = arun(main())
    assert (dialed, lost) == (2, 1)
    assert echoed == b"again" * 1000


def test_a_router_answering_with_another_certificate_never_becomes_a_link(
    network: LocalNetwork, arun
) -> None:
    async def main() -> tuple[dict[str, int], dict[str, object], bool]:
        r2_identity = network.identity("r2", kind="router")
        r1_identity = network.identity("r1", kind="router")
        async with (
            Router(RouterConfig(r1_identity, port=0)) as r1,
            Router(RouterConfig(r2_identity, port=0)) as r2,
        ):
            # r2's address, but r1 expects r3 there (a stale or hijacked registration).
            link = await r1.dial_router(r2.address, "spiffe://test.umbra/router/r3")
            await asyncio.wait_for(asyncio.shield(link.lost), BOUND)
            return dict(r1.switch.counters), r1.statistics(), bool(r1.router_links())

    counters, stats, linked = arun(main())
    assert counters["mesh_wrong_peer"] == 1
    assert not linked and stats["links"] == 0


def test_router_processes_mesh_through_the_controller_and_relay_a_dial(tmp_path: Path) -> None:
    """The runner as shipped: two router processes register, learn each other from the
    controller, link, report over HTTP and install the routes the controller computed."""
    net = Quickstart(
        tmp_path, router_port=free_port(), controller_port=free_port(), say=lambda _m: None
    )
    try:
        net.start_core()
        second = start_router2(net, tmp_path)

        async def prepare() -> tuple[Path, Path]:
            await net.ensure_service("mesh", ["mesh-c"], ["mesh-h"])
            return await net.enroll("mesh-host", ["mesh-h"]), await net.enroll(
                "mesh-client", ["mesh-c"]
            )

        host_file, client_file = asyncio.run(prepare())

        async def main() -> bytes:
            first = f"127.0.0.1:{net.router_port}"
            host, client = pinned(host_file, second), pinned(client_file, first)
            async with host, client:
                deadline = time.monotonic() + BOUND
                while True:  # until router2 registered and both reported their state
                    try:
                        listener = await host.listen("mesh").start()
                        break
                    except UmbraError:
                        assert time.monotonic() < deadline, "router2 never came up"
                        await asyncio.sleep(0.3)
                server = asyncio.get_running_loop().create_task(echo_forever(listener))
                while True:
                    try:
                        stream = await client.dial("mesh")
                        break
                    except DialError as exc:  # no route yet: the mesh is still forming
                        assert exc.code == "no_terminator", exc
                        assert time.monotonic() < deadline, "no route from router1 to router2"
                        await asyncio.sleep(0.3)
                payload = b"through two router processes " * 3000
                stream.write(payload)
                stream.write_eof()
                echoed = await asyncio.wait_for(stream.read(), BOUND)
                server.cancel()
                await listener.close()
                return echoed

        assert asyncio.run(asyncio.wait_for(main(), 2 * BOUND)) == (
            b"through two router processes " * 3000
        )
    finally:
        net.stop()


def test_the_controllers_strategy_reaches_the_router_where_the_service_is_bound(
    network: LocalNetwork, arun
) -> None:
    async def main() -> None:
        async with _mesh(network, ["r1", "r2"]) as (shells, twin):
            r2 = shells[1].router
            twin.graph.set_policy(MeshPolicy(strategies={"echo": "sticky"}))
            host = _context(network, "web", "server", r2)
            async with host:
                listener = await host.listen("echo").start()
                await _routed(shells[1])
                assert r2.switch.terminators.strategy("echo") == "sticky"
                assert shells[0].router.switch.terminators.strategy("echo") == "smart"
                twin.graph.set_policy(MeshPolicy())  # cleared: the version moved, pushed
                await _until(lambda: r2.switch.terminators.strategy("echo") == "smart")
                assert shells[1].counters["pushed"] >= 1
                await listener.close()

    arun(main())


def test_a_router_the_controller_marks_no_transit_refuses_transit_itself(
    network: LocalNetwork, arun
) -> None:
    async def main() -> None:
        async with _mesh(network, ["r1", "r2"]) as (shells, twin):
            r1, r2 = shells[0].router, shells[1].router
            twin.graph.set_policy(MeshPolicy(no_transit=frozenset({r2.identity.spiffe_id})))
            await _routed(*shells)
            assert r2.switch.no_transit and not r1.switch.no_transit
            twin.graph.set_policy(MeshPolicy())  # unmarked: pushed, the next answer says so
            await _until(lambda: not r2.switch.no_transit)

    arun(main())
