"""The mesh as shipped, in real processes on loopback: a controller and two routers
(`umbra controller run`, `umbra router run`), endpoints in this process.

- The data plane outlives the controller: with the controller process stopped, an
  established stream keeps flowing both ways, the host stays bound, and a new dial is
  admitted with the cached ticket over the routes the routers hold; after the controller
  comes back, tickets are fetched fresh again. A few seconds of outage stand in for the
  issue's ten minutes: nothing in the data plane counts time against the controller (the
  limit is each ticket's own expiry, see docs/mesh.md), so a longer outage differs only
  by tickets and certificates running out, which the test's lifetimes exclude. The
  outage is longer than a router's report interval, so failed reports are exercised.
- An endpoint linked to both routers dials through the best one and, when that router's
  process is killed (SIGKILL), through the other.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import echo_forever, free_port
from tests.integration.mesh_loopback import pinned, start_router2
from umbranet.pki.tickets import Action
from umbranet.quickstart import Quickstart
from umbranet.sdk import Context, DialError, UmbraError

BOUND = 30.0
OUTAGE = 6.0  # longer than one router report interval (5 s)


@pytest.fixture
def mesh(tmp_path: Path):  # type: ignore[no-untyped-def]
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
        yield net, f"127.0.0.1:{net.router_port}", second, host_file, client_file
    finally:
        net.stop()


def _child(net: Quickstart, name: str):  # type: ignore[no-untyped-def]
    index = net.names.index(name)
    child = net.children.pop(index)
    net.names.pop(index)
    return child


async def _first_dial(client: Context, deadline: float):  # type: ignore[no-untyped-def]
    while True:
        try:
            return await client.dial("mesh")
        except DialError as exc:  # no route yet: the mesh is still forming
            assert exc.code in ("no_terminator", "unreachable"), exc
            assert time.monotonic() < deadline, "no route from router1 to router2"
            await asyncio.sleep(0.3)


async def _round(stream, payload: bytes) -> bytes:  # type: ignore[no-untyped-def]
    stream.write(payload)
    got = b""
    while len(got) < len(payload):
        chunk = await asyncio.wait_for(stream.read(65536), BOUND)
        assert chunk, "the stream ended"
        got += chunk
    return got


def test_the_data_plane_keeps_working_while_the_controller_is_stopped(mesh) -> None:  # type: ignore[no-untyped-def]
    net, first, second, host_file, client_file = mesh

    async def main() -> None:
        host = pinned(host_file, second)
        client = pinned(client_file, first)
        async with host, client:
            deadline = time.monotonic() + BOUND
            while True:
                try:
                    listener = await host.listen("mesh").start()
                    break
                except UmbraError:
                    assert time.monotonic() < deadline, "router2 never came up"
                    await asyncio.sleep(0.3)
            server = asyncio.get_running_loop().create_task(echo_forever(listener))
            held = await _first_dial(client, deadline)
            assert await _round(held, b"before " * 1000) == b"before " * 1000

            controller = _child(net, "controller")
            controller.send_signal(signal.SIGTERM)
            await asyncio.to_thread(controller.wait, 10)  # the loop keeps answering keepalives
            outage_ends = time.monotonic() + OUTAGE
            rounds = 0
            while time.monotonic() < outage_ends:  # the established stream keeps flowing
                payload = f"during {rounds} ".encode() * 500
                assert await _round(held, payload) == payload
                rounds += 1
                await asyncio.sleep(0.5)
            # A new dial: the cached ticket, the routes the routers kept, the host's binding.
            fresh = await asyncio.wait_for(client.dial("mesh"), BOUND)
            assert await _round(fresh, b"new while down " * 100) == b"new while down " * 100
            with pytest.raises(DialError) as refused:  # no new grants without the controller
                await client.ticket("mesh", Action.DIAL, fresh=True)
            assert refused.value.code == "unreachable"

            net.spawn("controller", ["--home", str(net.root), "controller", "run"])
            while True:  # tickets come from the controller again once it answers
                try:
                    await client.ticket("mesh", Action.DIAL, fresh=True)
                    break
                except DialError as exc:
                    assert exc.code == "unreachable", exc
                    assert time.monotonic() < deadline + 2 * BOUND, "controller not back"
                    await asyncio.sleep(0.3)
            after = await asyncio.wait_for(client.dial("mesh"), BOUND)
            assert await _round(after, b"after " * 100) == b"after " * 100
            assert await _round(held, b"still the same stream") == b"still the same stream"
            assert rounds >= 5
            server.cancel()
            await listener.close()

    asyncio.run(asyncio.wait_for(main(), 4 * BOUND))


def test_an_endpoint_linked_to_two_routers_moves_to_the_other_when_one_is_killed(mesh) -> None:  # type: ignore[no-untyped-def]
    net, first, second, host_file, client_file = mesh

    async def main() -> None:
        host = pinned(host_file, second)
        client = pinned(client_file, first, second)
        async with host, client:
            deadline = time.monotonic() + BOUND
            while True:
                try:
                    listener = await host.listen("mesh").start()
                    break
                except UmbraError:
                    assert time.monotonic() < deadline, "router2 never came up"
                    await asyncio.sleep(0.3)
            server = asyncio.get_running_loop().create_task(echo_forever(listener))
            stream = await _first_dial(client, deadline)
            assert await _round(stream, b"one") == b"one"
            while len(client.statistics()["router_rtt_ms"]) < 2:  # the standby link too
                assert time.monotonic() < deadline, "no standby link"
                await asyncio.sleep(0.1)
            rtts = client.statistics()["router_rtt_ms"]
            print("router RTTs (ms):", rtts, "home:", client.home_router())
            assert set(rtts) == {first, second} and client.home_router() in rtts

            router1 = _child(net, "router")
            router1.send_signal(signal.SIGKILL)
            await asyncio.to_thread(router1.wait, 10)
            # The first link's loss is noticed by TCP (a killed process's sockets close);
            # the next dial goes through router2 without asking the controller.
            again = await asyncio.wait_for(client.dial("mesh"), BOUND)
            assert await _round(again, b"two") == b"two"
            assert again.get_extra_info("router") is not None
            assert client.home_router() == second
            server.cancel()
            await listener.close()

    asyncio.run(asyncio.wait_for(main(), 3 * BOUND))


async def _named_echo(name: bytes) -> tuple[asyncio.Server, int]:
    """A TCP echo server that says who it is first (which host's side served a stream)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name)
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_dials_fail_over_to_the_other_host_when_one_host_process_is_killed(mesh) -> None:  # type: ignore[no-untyped-def]
    net, first, _second, host_file, client_file = mesh
    other_file = asyncio.run(net.enroll("mesh-host2", ["mesh-h"]))

    async def main() -> None:
        one, one_port = await _named_echo(b"one:")
        two, two_port = await _named_echo(b"two:")
        hosts = [
            net.spawn(
                name,
                ["host", "mesh", "--identity", str(path), "--to", f"tcp://127.0.0.1:{port}"],
            )
            for name, path, port in (
                ("host-one", host_file, one_port),
                ("host-two", other_file, two_port),
            )
        ]
        # Each dial a new choice of host: a stream opened inside a session goes to the host
        # process holding it, so it would never reach the second host.
        client = pinned(client_file, first, session_streams=False)

        async def who() -> bytes:
            stream = await client.dial("mesh")
            answer = await _round(stream, b"1234")  # the name (4 bytes) comes first
            stream.write_eof()
            return answer[:4]

        async with client:
            deadline = time.monotonic() + BOUND
            seen: set[bytes] = set()
            while seen != {b"one:", b"two:"}:  # until both hosts are bound and take dials
                assert time.monotonic() < deadline, f"both hosts never served: {seen}"
                try:
                    seen.add(await asyncio.wait_for(who(), BOUND))
                except DialError:
                    await asyncio.sleep(0.2)
            hosts[0].send_signal(signal.SIGKILL)
            await asyncio.to_thread(hosts[0].wait, 10)
            # Every dial is answered, by the host still alive: one sent to the dead host
            # before the router saw its link close is sent on to the other host.
            answers = [await asyncio.wait_for(who(), BOUND) for _ in range(8)]
            assert answers == [b"two:"] * 8
        for server in (one, two):
            server.close()

    asyncio.run(asyncio.wait_for(main(), 4 * BOUND))
