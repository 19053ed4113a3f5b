"""The TURN client (proto/turn.py) against a real coturn on loopback, with credentials minted
the way the controller mints them (coturn's shared-secret REST scheme).

Two clients allocate relays, permit each other's relayed address, exchange datagrams by Send
indications, then bind channels and exchange ChannelData; a wrong password is refused.
coturn comes from the Debian package `coturn` (installed by scripts/test as root in CI);
skips without it.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from umbranet.clock import Instant
from umbranet.controller.service.nat import turn_password
from umbranet.proto.turn import (
    Allocated,
    AllocationFailed,
    ChannelBound,
    DataReceived,
    Event,
    PermissionCreated,
    TurnClient,
)

SECRET = "lab-shared-secret-for-coturn"
REALM = "umbra.test"

pytestmark = pytest.mark.skipif(
    shutil.which("turnserver") is None, reason="coturn is not installed (Debian package coturn)"
)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[tuple[str, int]]:
    port = _free_udp_port()
    low = 40000 + random.randrange(0, 20000)
    log = tmp_path / "turnserver.log"
    proc = subprocess.Popen(
        ["turnserver", "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
         "--relay-ip=127.0.0.1", "--use-auth-secret", f"--static-auth-secret={SECRET}",
         f"--realm={REALM}", "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers",
         f"--min-port={low}", f"--max-port={low + 50}", f"--log-file={log}", "--simple-log",
         "--no-stun-backward-compatibility", f"--pidfile={tmp_path / 'turn.pid'}",
         f"--userdb={tmp_path / 'turn.db'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_answering(("127.0.0.1", port))
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait_answering(server: tuple[str, int], seconds: float = 20.0) -> None:
    """Until coturn answers a STUN binding request (it starts slowly on a loaded machine)."""
    from umbranet.proto.stun import BINDING, REQUEST, StunMessage, encode

    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(encode(StunMessage(BINDING, REQUEST, os.urandom(12))), server)
            with contextlib.suppress(TimeoutError, ConnectionRefusedError):
                s.recvfrom(2048)
                return
            time.sleep(0.1)
    raise AssertionError("coturn never answered")


def now() -> Instant:
    return Instant(time.monotonic(), datetime.now(UTC))


class Side:
    def __init__(self, server: tuple[str, int], username: str, password: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.client = TurnClient(server, username, password, random_bytes=os.urandom)
        self.events: list[Event] = []

    def pump(self) -> None:
        while (out := self.client.poll_transmit()) is not None:
            self.sock.sendto(*out)
        with contextlib.suppress(TimeoutError):
            data, addr = self.sock.recvfrom(65535)
            self.client.handle_datagram(data, (addr[0], addr[1]), now())
        self.client.handle_timeout(now())
        while (out := self.client.poll_transmit()) is not None:
            self.sock.sendto(*out)
        while (event := self.client.poll_event()) is not None:
            self.events.append(event)


def wait(sides: list[Side], done: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for side in sides:
            side.pump()
        if done():  # type: ignore[operator]
            return
    raise AssertionError(f"timed out: {[s.events for s in sides]}")


def credential(who: str, ttl: int = 600) -> tuple[str, str]:
    username = f"{int(time.time()) + ttl}:spiffe://demo.umbra/device/{who}"
    return username, turn_password(SECRET, username)


def test_two_clients_relay_through_coturn(coturn: tuple[str, int]) -> None:
    a, b = Side(coturn, *credential("alice")), Side(coturn, *credential("bob"))
    a.client.allocate(now())
    b.client.allocate(now())
    wait([a, b], lambda: a.client.relayed and b.client.relayed)
    assert isinstance(a.events[0], Allocated) and a.events[0].mapped == a.sock.getsockname()
    ra, rb = a.client.relayed, b.client.relayed
    assert ra is not None and rb is not None
    a.client.create_permission(rb[0], now())
    b.client.create_permission(ra[0], now())
    wait([a, b], lambda: any(isinstance(e, PermissionCreated) for e in a.events + b.events)
         and sum(isinstance(e, PermissionCreated) for e in a.events + b.events) == 2)  # fmt: skip
    a.client.send(rb, b"hello over a send indication")
    wait([a, b], lambda: any(isinstance(e, DataReceived) for e in b.events))
    got = [e for e in b.events if isinstance(e, DataReceived)]
    assert got[0] == DataReceived(ra, b"hello over a send indication")
    a.client.bind_channel(rb, now())
    b.client.bind_channel(ra, now())
    wait([a, b], lambda: sum(isinstance(e, ChannelBound) for e in a.events + b.events) == 2)
    b.client.send(ra, b"x" * 1200)
    wait([a, b], lambda: any(isinstance(e, DataReceived) for e in a.events))
    assert [e for e in a.events if isinstance(e, DataReceived)] == [DataReceived(rb, b"x" * 1200)]
    assert b.client.counters["channel_data_out"] == 1
    a.client.close(now())
    wait([a], lambda: not a.client._pending)


def test_a_wrong_or_expired_credential_is_refused(coturn: tuple[str, int]) -> None:
    username, _ = credential("mallory")
    wrong = Side(coturn, username, turn_password("not-the-secret", username))
    wrong.client.allocate(now())
    wait([wrong], lambda: wrong.events)
    assert isinstance(wrong.events[0], AllocationFailed) and "401" in wrong.events[0].reason
    expired = Side(coturn, *credential("eve", ttl=-60))
    expired.client.allocate(now())
    wait([expired], lambda: expired.events)
    assert isinstance(expired.events[0], AllocationFailed), expired.events


def test_wireguard_between_two_devices_through_a_coturn_relay(coturn: tuple[str, int]) -> None:
    """A allocates a relay; B only ever sends to A's relayed address (as behind a NAT that
    lets nothing else through): probes select the relayed pair on both sides and WireGuard
    packets cross both ways."""
    from tests.wireguard_harness import A_IP, B_IP, ipv4_packet, key, seeded
    from umbranet.proto.ice import Candidate
    from umbranet.proto.traversal import Traversal
    from umbranet.proto.wireguard import Device, PacketsReceived
    from umbranet.proto.wireguard.crypto import public_key

    da, db = Device(key("a"), random_bytes=seeded(1)), Device(key("b"), random_bytes=seeded(2))
    ka, kb = public_key(key("a")), public_key(key("b"))
    da.add_peer(kb, allowed_ips=[f"{B_IP}/32"])
    db.add_peer(ka, allowed_ips=[f"{A_IP}/32"])
    ta = Traversal(da, key("a"), ka, random_bytes=os.urandom)
    tb = Traversal(db, key("b"), kb, random_bytes=os.urandom)
    socks = {}
    for name in ("a", "b"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks[name] = s
    sides = [(ta, socks["a"]), (tb, socks["b"])]

    def pump(until: object, seconds: float = 15.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for traversal, sock in sides:
                traversal.handle_timeout(now())
                while (out := traversal.poll_all_transmit()) is not None:
                    sock.sendto(*out)
                for _ in range(64):
                    try:
                        data, addr = sock.recvfrom(65535)
                    except BlockingIOError:
                        break
                    traversal.handle_datagram(data, (addr[0], addr[1]), now())
                while (out := traversal.poll_all_transmit()) is not None:
                    sock.sendto(*out)
            if until():  # type: ignore[operator]
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out: {ta.statistics()['traversal']}")

    ta.set_turn(coturn, *credential("alice"), now())
    pump(lambda: ta.relayed is not None)
    assert ta.relayed is not None
    # A knows B only by its IP (what STUN would tell); B knows only A's relayed address
    ta.set_peer(kb, [Candidate("srflx", ("127.0.0.1", 9))], now())
    tb.set_peer(ka, [Candidate("relay", ta.relayed)], now())
    pump(lambda: ta.direct.get(kb) is not None and tb.direct.get(ka) is not None)
    assert tb.direct[ka] == ta.relayed and tb.is_relayed(ka)
    # A's own probes go straight (to punch holes); on loopback they reach B directly
    assert ta.direct[kb] == socks["b"].getsockname()
    got: dict[str, list[bytes]] = {"a": [], "b": []}

    def received() -> bool:
        for name, traversal in (("a", ta), ("b", tb)):
            while (event := traversal.poll_event()) is not None:
                if isinstance(event, PacketsReceived):
                    got[name].extend(event.packets)
        return bool(got["a"] and got["b"])

    ta.send_packet(ipv4_packet(A_IP, B_IP, b"a to b via coturn"), now())
    tb.send_packet(ipv4_packet(B_IP, A_IP, b"b to a via coturn"), now())
    pump(received)
    assert got["b"] == [ipv4_packet(A_IP, B_IP, b"a to b via coturn")]
    assert got["a"] == [ipv4_packet(B_IP, A_IP, b"b to a via coturn")]
    assert ta.counters["turn_data_in"] > 0
    for s in socks.values():
        s.close()
