"""TURN over TCP and over TLS (`aio/turn_stream.py`) against a real coturn on loopback.

coturn runs with its UDP listeners off (``--no-udp``), as behind a firewall that lets only
TCP out, so every exchange below crossed the stream. The client allocates a UDP relay over
the stream; a plain UDP socket plays the peer. Checked, over TCP and over TLS: the relayed
address, data both ways by Send/Data indications, then by ChannelData with odd lengths (the
stream's 4-byte padding) and a burst of datagrams that arrive glued together in a few
reads, each delivered whole and in order; a wrong credential is refused with the server's
code; a TLS server the client does not trust is the `stream_connect_failed` verdict.
coturn comes from the Debian package `coturn`; skips without it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import random
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port, wait_for
from umbranet.aio.turn_stream import TurnStream, parse_turn_url
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

SECRET = "lab-shared-secret-for-coturn-streams"
REALM = "umbra.test"

pytestmark = pytest.mark.skipif(
    shutil.which("turnserver") is None, reason="coturn is not installed (Debian package coturn)"
)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "turn.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "turn-cert.pem", directory / "turn-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Coturn:
    def __init__(self, tcp: int, tls: int, cert: Path) -> None:
        self.tcp, self.tls, self.cert = tcp, tls, cert


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    tcp, tls = free_port(), free_port()
    cert, key = _self_signed(tmp_path)
    low = 40000 + random.randrange(0, 20000)
    proc = subprocess.Popen(
        ["turnserver", "-n", "--listening-ip=127.0.0.1", f"--listening-port={tcp}",
         f"--tls-listening-port={tls}", f"--cert={cert}", f"--pkey={key}", "--no-udp",
         "--no-dtls", "--relay-ip=127.0.0.1", "--use-auth-secret",
         f"--static-auth-secret={SECRET}", f"--realm={REALM}", "--no-cli",
         "--allow-loopback-peers", f"--min-port={low}", f"--max-port={low + 50}",
         f"--log-file={tmp_path / 'turnserver.log'}", "--simple-log",
         f"--pidfile={tmp_path / 'turn.pid'}", f"--userdb={tmp_path / 'turn.db'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def listening() -> bool:
        for port in (tcp, tls):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                return False
        return True

    try:
        wait_for("coturn's TCP and TLS listeners", listening, 20)
        yield Coturn(tcp, tls, cert)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def now() -> Instant:
    return Instant(time.monotonic(), dt.datetime.now(dt.UTC))


def credential(who: str, ttl: int = 600) -> tuple[str, str]:
    username = f"{int(time.time()) + ttl}:spiffe://demo.umbra/device/{who}"
    return username, turn_password(SECRET, username)


def _stream(coturn: Coturn, transport: str, password: str | None = None) -> TurnStream:
    username, good = credential("alice")
    if transport == "tls":
        url = f"turns:127.0.0.1:{coturn.tls}"
        context: ssl.SSLContext | None = ssl.create_default_context(cafile=str(coturn.cert))
    else:
        url = f"turn:127.0.0.1:{coturn.tcp}?transport=tcp"
        context = None
    server = parse_turn_url(url)
    assert server is not None and server.transport == transport
    client = TurnClient(
        server.address, username, password or good, random_bytes=os.urandom, stream=True
    )
    return TurnStream(client, ssl_context=context, server_hostname="127.0.0.1")


async def _event(stream: TurnStream, kind: type[Event], seconds: float = 10.0) -> Event:
    deadline = time.monotonic() + seconds
    while True:
        event = await stream.next_event(max(0.01, deadline - time.monotonic()))
        if isinstance(event, kind):
            return event
        assert not isinstance(event, AllocationFailed), event


async def _peer_recv(peer: socket.socket, seconds: float = 10.0) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    data, addr = await asyncio.wait_for(loop.sock_recvfrom(peer, 65535), seconds)
    return data, (addr[0], addr[1])


async def _relay_both_ways(coturn: Coturn, transport: str) -> None:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    peer_addr = ("127.0.0.1", peer.getsockname()[1])
    try:
        async with _stream(coturn, transport) as turn:
            turn.allocate()
            allocated = await _event(turn, Allocated)
            assert isinstance(allocated, Allocated)
            relayed = allocated.relayed
            assert relayed[0] == "127.0.0.1"
            turn.create_permission("127.0.0.1")
            await _event(turn, PermissionCreated)
            # Send/Data indications
            turn.send(peer_addr, b"hello over a send indication")
            assert await _peer_recv(peer) == (b"hello over a send indication", relayed)
            peer.sendto(b"and back by a data indication", relayed)
            got = await _event(turn, DataReceived)
            assert got == DataReceived(peer_addr, b"and back by a data indication")
            # ChannelData: odd lengths need the stream's padding, both ways
            turn.bind_channel(peer_addr)
            await _event(turn, ChannelBound)
            turn.send(peer_addr, b"x" * 1201)
            assert await _peer_recv(peer) == (b"x" * 1201, relayed)
            burst = [bytes([i]) * (1 + i * 7) for i in range(40)]
            for datagram in burst:
                peer.sendto(datagram, relayed)
            received = [await _event(turn, DataReceived) for _ in burst]
            assert received == [DataReceived(peer_addr, d) for d in burst]
            assert turn.client.counters["channel_data_out"] == 1
            assert turn.client.broken is None and turn.client.counters["retransmits"] == 0
    finally:
        peer.close()


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_relay_over_a_stream_to_coturn(coturn: Coturn, transport: str) -> None:
    asyncio.run(_relay_both_ways(coturn, transport))


def test_a_wrong_credential_is_refused_over_tcp(coturn: Coturn) -> None:
    async def scenario() -> None:
        async with _stream(coturn, "tcp", password="not-the-password") as turn:
            turn.allocate()
            event = await turn.next_event(10)
            assert isinstance(event, AllocationFailed) and "401" in event.reason
            assert turn.client.counters["error_401"] == 1

    asyncio.run(scenario())


def test_an_untrusted_tls_server_is_a_connect_verdict(coturn: Coturn) -> None:
    async def scenario() -> None:
        username, password = credential("alice")
        client = TurnClient(
            ("127.0.0.1", coturn.tls), username, password, random_bytes=os.urandom, stream=True
        )
        turn = TurnStream(
            client, ssl_context=ssl.create_default_context(), server_hostname="127.0.0.1"
        )
        with pytest.raises(OSError):
            await turn.open()
        event = await turn.next_event(1)
        assert event == AllocationFailed("stream_connect_failed")
        assert turn.counters["refused_stream_connect_failed"] == 1

    asyncio.run(scenario())


def test_the_agents_udp_turn_client_reaches_coturn_through_the_tcp_bridge(coturn: Coturn) -> None:
    """The agent's TURN client stays a UDP client (it shares the WireGuard socket); the
    loopback bridge carries it over TCP to a coturn that has no UDP listener."""
    from umbranet.aio.turn_bridge import TurnBridge

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        bridge = await TurnBridge.open(("127.0.0.1", coturn.tcp))
        mine = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (mine, peer, stranger):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        peer_addr = ("127.0.0.1", peer.getsockname()[1])
        client = TurnClient(bridge.address, *credential("alice"), random_bytes=os.urandom)
        events: list[Event] = []

        async def pump(done: object, seconds: float = 10.0) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                while (out := client.poll_transmit()) is not None:
                    mine.sendto(*out)
                try:
                    data, addr = await asyncio.wait_for(loop.sock_recvfrom(mine, 65535), 0.05)
                    client.handle_datagram(data, (addr[0], addr[1]), now())
                except TimeoutError:
                    pass
                client.handle_timeout(now())
                while (event := client.poll_event()) is not None:
                    events.append(event)
                if done():  # type: ignore[operator]
                    return
            raise AssertionError(f"timed out: {events} {bridge.statistics()}")

        try:
            client.allocate(now())
            await pump(lambda: client.relayed is not None)
            relayed = client.relayed
            assert relayed is not None
            client.create_permission("127.0.0.1", now())
            await pump(lambda: any(isinstance(e, PermissionCreated) for e in events))
            client.bind_channel(peer_addr, now())
            await pump(lambda: any(isinstance(e, ChannelBound) for e in events))
            client.send(peer_addr, b"y" * 999)  # odd: padded on the stream, not on loopback
            while (out := client.poll_transmit()) is not None:
                mine.sendto(*out)
            assert await _peer_recv(peer) == (b"y" * 999, relayed)
            peer.sendto(b"z" * 333, relayed)
            await pump(lambda: any(isinstance(e, DataReceived) for e in events))
            assert [e for e in events if isinstance(e, DataReceived)] == [
                DataReceived(peer_addr, b"z" * 333)
            ]
            # another local socket cannot borrow the allocation
            stranger.sendto(b"\x40\x00\x00\x04abcd", bridge.address)
            await asyncio.sleep(0.2)
            assert bridge.counters["refused_foreign_source"] == 1
            assert bridge.reason is None
        finally:
            bridge.close()
            for s in (mine, peer, stranger):
                s.close()

    asyncio.run(scenario())
