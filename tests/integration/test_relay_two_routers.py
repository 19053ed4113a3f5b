"""Relay across two routers, in real processes on loopback: a controller and two routers
(`umbra controller run`, `umbra router run`, which link to each other by themselves), and
two devices' relay links (`aio.wg_relay.RelayLink`) in this process, A's to router1 and B's
to router2.

Checked: with the relay tickets of their filtered views, A's datagrams reach B through
router1 and router2 stamped with A's key, and B's reach A the other way; a third device C
with no grant (hence no ticket) linked to router1 gets nothing through to B and is told
``relay_not_allowed`` by count at the router, not by closing its link. The datagrams are
opaque bytes to the routers; `tests/unit/test_router_relay_mesh.py` checks the second
router's own ticket check (forged, expired, misdirected) without sockets.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from umbranet.aio.wg_relay import RelayLink
from umbranet.client.controller import ControllerClient
from umbranet.pki import IdentityFile
from umbranet.quickstart import Quickstart

BOUND = 40.0
SEALED = b"\x04\x00\x00\x00" + b"opaque-to-routers" * 4


@pytest.fixture
def two_routers(tmp_path: Path):  # type: ignore[no-untyped-def]
    net = Quickstart(
        tmp_path, router_port=free_port(), controller_port=free_port(), say=lambda _m: None
    )
    try:
        net.start_core()
        second = f"127.0.0.1:{free_port()}"

        async def prepare() -> list[Path]:
            path = tmp_path / "router2.json"
            async with net.admin() as admin:
                created = await admin.create_router("router2")
            (await ControllerClient.enroll(created.enrollment_token)).save(path)
            net.spawn("router2", ["router", "run", "--identity", str(path), "--listen", second])
            await net.ensure_service("wgpair", ["dev-a"], ["dev-b"])
            return [await net.enroll(f"dev-{d}", [f"dev-{d}"]) for d in "abc"]

        files = asyncio.run(prepare())
        yield f"127.0.0.1:{net.router_port}", second, files
    finally:
        net.stop()


async def _connect(link: RelayLink) -> None:
    """Connect, retrying while the router process is still starting (bounded)."""
    deadline = time.monotonic() + BOUND
    while True:
        try:
            await link.connect(timeout=BOUND)
            return
        except OSError:
            assert time.monotonic() < deadline, f"router {link.address} never listened"
            await asyncio.sleep(0.3)


async def _ticket_for(identity: IdentityFile, peer: IdentityFile) -> str:
    key = base64.b64encode(peer.noise_public_key).decode()
    async with ControllerClient(identity) as client:
        view: dict[str, Any] = await client.view()
    for item in view["peers"]:
        if item["noise_public_key"] == key:
            return str(item["relay_ticket"])
    raise AssertionError(f"{peer.spiffe_id} is not in the view of {identity.spiffe_id}")


def test_datagrams_cross_two_routers_only_for_the_ticketed_pair(two_routers) -> None:  # type: ignore[no-untyped-def]
    first, second, files = two_routers
    a_id, b_id, c_id = (IdentityFile.load(f) for f in files)

    async def main() -> None:
        got: dict[str, list[tuple[bytes, bytes]]] = {"a": [], "b": []}
        a = RelayLink(a_id, first, lambda key, ds: got["a"].extend((key, d) for d in ds))
        b = RelayLink(b_id, second, lambda key, ds: got["b"].extend((key, d) for d in ds))
        c = RelayLink(c_id, first, lambda key, ds: None)
        for link in (a, b, c):
            await _connect(link)
        try:
            a.allow(b_id.noise_public_key, await _ticket_for(a_id, b_id))
            b.allow(a_id.noise_public_key, await _ticket_for(b_id, a_id))
            # The routers link and announce B's key in their own time: send until it lands.
            deadline = time.monotonic() + BOUND
            while not got["b"]:
                assert time.monotonic() < deadline, (a.statistics(), b.statistics())
                a.send_relayed(b_id.noise_public_key, SEALED)
                await asyncio.sleep(0.3)
            assert got["b"][0] == (a_id.noise_public_key, SEALED)
            deadline = time.monotonic() + BOUND
            while not got["a"]:
                assert time.monotonic() < deadline, (a.statistics(), b.statistics())
                b.send_relayed(a_id.noise_public_key, b"\x04back")
                await asyncio.sleep(0.3)
            assert got["a"][0] == (b_id.noise_public_key, b"\x04back")

            # C has no grant with B: no ticket, nothing crosses, C's link stays up.
            before = len(got["b"])
            for _ in range(5):
                c.send_relayed(b_id.noise_public_key, b"\x04from-c")
            a.send_relayed(b_id.noise_public_key, b"\x04marker")  # ordered after C's on r1?
            deadline = time.monotonic() + BOUND
            while not any(d == b"\x04marker" for _, d in got["b"][before:]):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            assert all(key == a_id.noise_public_key for key, _ in got["b"][before:])
            assert c.live
        finally:
            for link in (a, b, c):
                link.close()

    asyncio.run(main())
