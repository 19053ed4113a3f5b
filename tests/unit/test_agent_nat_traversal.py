"""Network mode's NAT traversal end to end in one process: two WireGuard devices on real
loopback sockets, routers' STUN servers announced through the controller, candidates
exchanged through it, probes selecting the direct pair, and a packet crossing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.controller_harness import Harness, make_harness
from tests.unit.test_wireguard_driver import SocketPort
from tests.wireguard_harness import ipv4_packet
from umbranet.agent import nat_traversal
from umbranet.agent.nat_traversal import NatTraversal
from umbranet.aio.stun_server import StunServer
from umbranet.aio.wg_driver import WireGuardDriver
from umbranet.client.controller import ControllerClient
from umbranet.proto.wireguard import Device

POLICY = """{"rules": [
  {"action": "bind", "src": ["srv"], "dst": ["svc:web"]},
  {"action": "dial", "src": ["cli"], "dst": ["svc:web"]},
]}"""


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def test_devices_find_each_other_through_the_controller(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # on loopback every address is "local": pretend none is, so the STUN answers count
    local: list[str] = []
    monkeypatch.setattr(nat_traversal, "local_addresses", lambda skip=(): list(local))
    admin = h.client(h.admin)
    assert (
        admin.post(
            "/v1/services", json={"name": "web", "host_address": "tcp://127.0.0.1:1"}
        ).status_code
        == 201
    )
    assert admin.put("/v1/policy", json={"text": POLICY}).status_code == 200
    srv, cli = h.new_device("srv"), h.new_device("cli")
    outsider = h.new_device("outsider")

    async def main() -> None:
        async with StunServer("127.0.0.1", 0) as s1, StunServer("127.0.0.1", 0) as s2:
            for name, server in (("r1", s1), ("r2", s2)):
                token = admin.post("/v1/routers", json={"name": name}).json()["enrollment_token"]
                host, _, port = server.address.rpartition(":")
                answer = h.client(h.enroll(token)).put(
                    "/v1/routers/self/stun", json={"host": host, "port": int(port)}
                )
                assert answer.status_code == 200
            sides = []
            for identity in (srv, cli, outsider):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("127.0.0.1", 0))
                sock.setblocking(False)
                device = Device.for_identity(identity)
                nat = NatTraversal(sock, identity.noise_private_key)
                port = SocketPort()
                driver = WireGuardDriver(nat.wrap(device), sock, port)  # type: ignore[arg-type]
                driver.start()
                sides.append((identity, sock, device, nat, port, driver))
            (_, _, dev_s, nat_s, port_s, _), (_, _, dev_c, nat_c, port_c, _) = sides[:2]
            nat_o = sides[2][3]
            key_s, key_c = dev_s.public_key, dev_c.public_key
            dev_s.add_peer(key_c, allowed_ips=["100.64.0.2/32"])  # no endpoint known
            dev_c.add_peer(key_s, allowed_ips=["100.64.0.1/32"])
            for _ in range(2):
                for identity, *_rest, nat, _p, _d in sides:
                    async with ControllerClient(identity, transport=h.transport(identity)) as c:
                        await nat.refresh(c, await c.view())
            assert nat_s.gathered is not None and nat_s.gathered.nat == "endpoint-independent"
            for _ in range(200):
                if nat_s.direct(key_c) and nat_c.direct(key_s):
                    break
                await asyncio.sleep(0.02)
            assert nat_s.direct(key_c) == sides[1][1].getsockname()
            assert dev_s.endpoint_of(key_c) == sides[1][1].getsockname()
            assert nat_s.path_reason(key_c) == "direct"
            # the outsider has no grant: it learned nobody's candidates, nobody learned its
            assert nat_o.peer_nat == {} and key_s in nat_c.peer_nat
            packet = ipv4_packet("100.64.0.1", "100.64.0.2", b"through the punched hole")
            port_s.kernel.send(packet)
            for _ in range(200):
                try:
                    got = port_c.kernel.recv(65535)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.02)
            else:
                raise AssertionError("the packet never arrived")
            assert got == packet
            # a network change (a new local address) is gathered and published at once
            local.append("198.18.77.7")
            async with ControllerClient(srv, transport=h.transport(srv)) as c:
                await nat_s.refresh(c, await c.view())
                assert nat_s.gathered is not None
                assert ("198.18.77.7", sides[0][1].getsockname()[1]) in {
                    cand.address for cand in nat_s.gathered.candidates
                }
            async with ControllerClient(cli, transport=h.transport(cli)) as c:
                seen = next(iter((await c.peer_candidates()).values()))["candidates"]
                assert {
                    "kind": "host",
                    "host": "198.18.77.7",
                    "port": sides[0][1].getsockname()[1],
                } in seen
            for _identity, sock, _dev, nat, port, driver in sides:
                driver.close()
                await nat.close()
                sock.close()
                port.close()

    asyncio.run(main())


def test_a_controller_without_nat_routes_leaves_the_published_endpoint() -> None:
    """An older controller (404 on the NAT routes) must not leave peers with no endpoint."""
    from umbranet.client.controller import ControllerError
    from umbranet.proto.wireguard.crypto import public_key

    class OldController:
        async def nat_config(self) -> dict[str, object]:
            raise ControllerError("not_found", "no such route", 404)

    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        private = bytes(range(32))
        nat = NatTraversal(sock, private)
        nat.wrap(Device(private))
        peer = public_key(bytes(range(1, 33)))
        assert nat.endpoint_for(peer, ("198.18.5.1", 51820)) is None  # not yet known
        await nat.refresh(OldController(), {"peers": []})  # type: ignore[arg-type]
        assert nat.endpoint_for(peer, ("198.18.5.1", 51820)) == ("198.18.5.1", 51820)
        await nat.close()
        sock.close()

    asyncio.run(main())


def test_a_peer_that_publishes_after_our_read_is_followed_up_without_a_refresh(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two devices coming up together: srv reads the candidates before cli has published
    any. srv reads them again on its own (at the follow-up pauses), not only at its next
    agent refresh minutes later."""
    monkeypatch.setattr(nat_traversal, "local_addresses", lambda skip=(): ["198.18.5.5"])
    admin = h.client(h.admin)
    body = {"name": "web", "host_address": "tcp://127.0.0.1:1"}
    assert admin.post("/v1/services", json=body).status_code == 201
    assert admin.put("/v1/policy", json={"text": POLICY}).status_code == 200
    srv, cli = h.new_device("srv"), h.new_device("cli")

    async def main() -> None:
        sides = []
        for identity in (srv, cli):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            nat = NatTraversal(sock, identity.noise_private_key, follow_up=(0.05,) * 40)
            nat.wrap(Device.for_identity(identity))
            sides.append((identity, sock, nat))
        (_, _, nat_s), (_, _, nat_c) = sides
        key_c = Device.for_identity(cli).public_key
        try:

            def opener(identity: object) -> Any:
                return lambda: ControllerClient(identity, transport=h.transport(identity))  # type: ignore[arg-type]

            async with ControllerClient(srv, transport=h.transport(srv)) as c:
                view_s = await c.view()
            nat_s.refresh_soon(opener(srv), view_s)
            for _ in range(200):  # srv has read once and found cli silent
                if nat_s.silent_peers():
                    break
                await asyncio.sleep(0.02)
            assert nat_s.silent_peers() == [key_c]
            async with ControllerClient(cli, transport=h.transport(cli)) as c:
                await nat_c.refresh(c, await c.view())  # cli publishes
            for _ in range(200):
                if not nat_s.silent_peers():
                    break
                await asyncio.sleep(0.02)
            assert key_c in nat_s.peer_nat  # learned with no refresh of srv's
        finally:
            for _identity, sock, nat in sides:
                await nat.close()
                sock.close()

    asyncio.run(main())
