"""Two WireGuard devices paired in memory, in virtual time: sessions, replay, MACs, cookies.

Each test drives the machines only through their inputs (`send_packet`, `handle_datagram`,
`handle_timeout`) and reads only their outputs (datagrams, events, `statistics()`), as the
UDP/TUN driver does.
"""

from __future__ import annotations

import pytest

from tests.wireguard_harness import (
    A_ADDR,
    A_IP,
    B_ADDR,
    B_IP,
    Pair,
    ipv4_packet,
    key,
    make_pair,
    seeded,
)
from umbranet.proto.wireguard import Device, DeviceConfig, HandshakeCompleted, PeerSilent
from umbranet.proto.wireguard import device as device_module
from umbranet.proto.wireguard.cookie import CookieGenerator
from umbranet.proto.wireguard.crypto import public_key, tai64n
from umbranet.proto.wireguard.handshake import StaticKey, create_initiation
from umbranet.proto.wireguard.messages import (
    TYPE_COOKIE_REPLY,
    TYPE_DATA,
    TYPE_INITIATION,
    TYPE_RESPONSE,
)
from umbranet.proto.wireguard.timers import KEEPALIVE_TIMEOUT, REKEY_AFTER_TIME, REKEY_TIMEOUT


def _drops(device: Device) -> dict[str, int]:
    return device.statistics()["drops"]  # type: ignore[return-value]


def _counts(device: Device) -> dict[str, int]:
    return device.statistics()["counts"]  # type: ignore[return-value]


def _types(pair: Pair, src: tuple[str, int]) -> list[int]:
    return [data[0] for data, s, _ in pair.wire if s == src]


def _send(pair: Pair, payload: bytes, *, from_a: bool = True) -> None:
    device, src, dst = (pair.a, A_IP, B_IP) if from_a else (pair.b, B_IP, A_IP)
    device.send_packet(ipv4_packet(src, dst, payload), pair.clock.now())
    pair.pump()


def test_first_packet_handshakes_and_arrives_both_ways() -> None:
    pair = make_pair()
    _send(pair, b"hello")
    _send(pair, b"hi back", from_a=False)
    assert pair.received(B_ADDR) == [ipv4_packet(A_IP, B_IP, b"hello")]
    assert pair.received(A_ADDR) == [ipv4_packet(B_IP, A_IP, b"hi back")]
    assert HandshakeCompleted(public_key(key("b")), True) in pair.events[A_ADDR]
    assert HandshakeCompleted(public_key(key("a")), False) in pair.events[B_ADDR]
    # One handshake, sizes as published; data padded to 16 bytes plus header and tag.
    sizes = sorted({len(d) for d, _, _ in pair.wire if d[0] in (TYPE_INITIATION, TYPE_RESPONSE)})
    assert sizes == [92, 148]
    data_sizes = {len(d) for d, _, _ in pair.wire if d[0] == TYPE_DATA}
    assert all((n - 32) % 16 == 0 for n in data_sizes)
    assert _drops(pair.a) == {} and _drops(pair.b) == {}


def test_the_responder_waits_for_confirmation_before_sending_on_a_new_session() -> None:
    pair = make_pair()
    # Lose A's first data packet: B holds the new session in `next` and must not use it yet.
    pair.drop = lambda data, src, dst: src == A_ADDR and data[0] == TYPE_DATA
    _send(pair, b"lost")
    pair.drop = lambda data, src, dst: False
    pair.wire.clear()
    _send(pair, b"from b", from_a=False)
    # B has no confirmed session, so it starts its own handshake rather than risk sending on
    # one A might not have; the packet then arrives.
    assert TYPE_INITIATION in _types(pair, B_ADDR)
    assert pair.received(A_ADDR) == [ipv4_packet(B_IP, A_IP, b"from b")]


def test_replayed_data_is_dropped_and_counted() -> None:
    pair = make_pair()
    _send(pair, b"once")
    data = next(d for d, s, _ in pair.wire if s == A_ADDR and d[0] == TYPE_DATA)
    pair.b.handle_datagram(data, A_ADDR, pair.clock.now())
    pair.pump()
    assert pair.received(B_ADDR) == [ipv4_packet(A_IP, B_IP, b"once")]
    assert _drops(pair.b) == {"replayed_data": 1}


def test_replayed_initiation_is_dropped_and_counted() -> None:
    pair = make_pair()
    _send(pair, b"x")
    initiation = next(d for d, s, _ in pair.wire if s == A_ADDR and d[0] == TYPE_INITIATION)
    pair.clock.advance(1.0)
    pair.wire.clear()
    pair.b.handle_datagram(initiation, ("198.18.9.9", 4444), pair.clock.now())
    pair.pump()
    assert _drops(pair.b) == {"replayed_initiation": 1}
    assert pair.wire == []  # no response: a replay costs the attacker a reply from no one
    assert pair.b.endpoint_of(public_key(key("a"))) == A_ADDR  # nor moves the endpoint
    _send(pair, b"still fine")
    assert pair.received(B_ADDR)[-1] == ipv4_packet(A_IP, B_IP, b"still fine")


def test_forged_mac1_is_dropped_before_any_diffie_hellman(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pair = make_pair()
    body, _ = create_initiation(
        StaticKey(key("a")), public_key(key("b")), key("e"), 7, tai64n(pair.clock.wall)
    )
    good = CookieGenerator(public_key(key("b"))).add_macs(body, 0.0)
    forged = good[:116] + bytes(b ^ 0xFF for b in good[116:132]) + good[132:]

    def no_crypto(*args: object) -> object:
        raise AssertionError("a forged MAC1 reached the handshake")

    monkeypatch.setattr(device_module, "consume_initiation", no_crypto)
    monkeypatch.setattr(device_module, "consume_response", no_crypto)
    pair.b.handle_datagram(forged, A_ADDR, pair.clock.now())
    response = bytes([TYPE_RESPONSE, 0, 0, 0]) + bytes(88)
    pair.b.handle_datagram(response, A_ADDR, pair.clock.now())
    assert _drops(pair.b) == {"bad_mac1": 2}
    assert pair.b.poll_transmit() is None


def test_a_handshake_flood_brings_cookie_replies_and_the_real_peer_still_gets_through() -> None:
    config = DeviceConfig(handshake_load_threshold=8)
    pair = make_pair(config=config)
    b_public = public_key(key("b"))
    attacker = ("198.18.66.6", 6666)

    def flood(n: int) -> None:
        # Valid MAC1 (anyone who knows B's public key can make it) from a spoofed source.
        for i in range(n):
            body, _ = create_initiation(
                StaticKey(key(f"x{i}")), b_public, key(f"xe{i}"), i, tai64n(pair.clock.wall)
            )
            pair.b.handle_datagram(
                CookieGenerator(b_public).add_macs(body, 0.0), attacker, pair.clock.now()
            )
        while pair.b.poll_transmit() is not None:
            pass  # the cookie replies go to the spoofed address, nobody reads them

    flood(20)
    assert pair.b.under_load(pair.clock.mono)
    assert _counts(pair.b)["tx_cookie_replies"] == 20 - 8
    assert "unknown_peer" in _drops(pair.b)  # the first 8 were processed: not under load yet

    # A's initiation now gets a cookie reply instead of a handshake ...
    _send(pair, b"through the flood")
    assert TYPE_COOKIE_REPLY in _types(pair, B_ADDR)
    assert _counts(pair.a)["rx_cookie_replies"] == 1
    assert pair.received(B_ADDR) == []
    # ... and its retry, REKEY_TIMEOUT later and still under flood, carries MAC2 and succeeds.
    for _ in range(6):
        pair.clock.advance(1.0)
        flood(10)
        pair.a.handle_timeout(pair.clock.now())
        pair.pump()
    assert pair.b.under_load(pair.clock.mono)
    assert pair.received(B_ADDR) == [ipv4_packet(A_IP, B_IP, b"through the flood")]
    retry = [d for d, s, _ in pair.wire if s == A_ADDR and d[0] == TYPE_INITIATION][-1]
    assert retry[-16:] != bytes(16)  # MAC2 present


def test_a_cookie_reply_is_bound_to_the_message_it_answers() -> None:
    config = DeviceConfig(handshake_load_threshold=0)
    pair = make_pair(config=config)
    pair.drop = lambda data, src, dst: data[0] == TYPE_COOKIE_REPLY
    _send(pair, b"x")
    reply = next(d for d, s, _ in pair.wire if s == B_ADDR and d[0] == TYPE_COOKIE_REPLY)
    pair.a.handle_datagram(reply, B_ADDR, pair.clock.now())
    pair.a.handle_datagram(reply, B_ADDR, pair.clock.now())  # a second copy is refused
    assert _counts(pair.a)["rx_cookie_replies"] == 1
    assert _drops(pair.a) == {"bad_cookie_reply": 1}


def test_idle_session_rekeys_after_time_on_send() -> None:
    pair = make_pair()
    _send(pair, b"first")
    initiations = _types(pair, A_ADDR).count(TYPE_INITIATION)
    pair.run(REKEY_AFTER_TIME + 1)
    _send(pair, b"after rekey time")
    # The packet goes out on the old (still valid) key and a new handshake starts.
    assert _types(pair, A_ADDR).count(TYPE_INITIATION) == initiations + 1
    assert pair.received(B_ADDR)[-1] == ipv4_packet(A_IP, B_IP, b"after rekey time")
    assert _counts(pair.a)["handshakes_completed"] == 2


def test_expired_sessions_are_never_used() -> None:
    pair = make_pair()
    _send(pair, b"first")
    pair.drop = lambda data, src, dst: True  # a cut link
    pair.run(200)  # beyond REJECT_AFTER_TIME: both sides must refuse the old keys
    old = next(d for d, s, _ in pair.wire if s == A_ADDR and d[0] == TYPE_DATA)
    pair.drop = lambda data, src, dst: False
    pair.b.handle_datagram(old, A_ADDR, pair.clock.now())
    assert _drops(pair.b).get("expired_key", 0) + _drops(pair.b).get("unknown_index", 0) == 1


def test_passive_keepalive_after_receiving_data() -> None:
    pair = make_pair()
    _send(pair, b"ping")
    before = _counts(pair.b).get("tx_keepalives", 0)
    pair.run(KEEPALIVE_TIMEOUT + 0.5)
    # B received data and sent nothing back for KEEPALIVE_TIMEOUT: it sends one keepalive.
    assert _counts(pair.b)["tx_keepalives"] == before + 1
    assert _counts(pair.a)["rx_keepalives"] >= 1
    pair.run(60)
    assert _counts(pair.b)["tx_keepalives"] == before + 1  # and no more while idle


def test_persistent_keepalive_keeps_sending_while_idle() -> None:
    pair = make_pair(keepalive=25)
    _send(pair, b"up")
    start = _counts(pair.a).get("tx_keepalives", 0)
    pair.run(100)
    # Any authenticated packet either way restarts the interval: B's passive keepalive at
    # t=10 moves A's to 35, then 60 and 85.
    assert _counts(pair.a)["tx_keepalives"] - start == 3


def test_unanswered_sends_rehandshake_and_an_unreachable_peer_goes_silent() -> None:
    pair = make_pair()
    _send(pair, b"up")
    pair.drop = lambda data, src, dst: src == B_ADDR  # B's replies vanish
    _send(pair, b"into the void")
    pair.run(KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 1)
    assert _counts(pair.a)["rehandshakes_no_reply"] == 1
    pair.run(120)
    silent = [e for e in pair.events[A_ADDR] if isinstance(e, PeerSilent)]
    assert silent == [PeerSilent(public_key(key("b")), "handshake_timeout")]
    # 1 first attempt + 18 retries, each REKEY_TIMEOUT (+ jitter) apart: 90 s of trying.
    assert _counts(pair.a)["tx_initiations"] == 1 + 1 + 18


def test_packets_from_addresses_the_peer_may_not_use_are_dropped() -> None:
    pair = make_pair()
    _send(pair, b"ok")
    pair.b.send_to(public_key(key("a")), ipv4_packet("10.9.9.9", A_IP, b"spoof"), pair.clock.now())
    pair.pump()
    assert pair.received(A_ADDR) == []
    assert _drops(pair.a) == {"source_not_allowed": 1}


def test_an_unknown_peer_cannot_handshake() -> None:
    pair = make_pair()
    stranger = Device(key("stranger"), random_bytes=seeded(9))
    stranger.add_peer(public_key(key("b")), endpoint=B_ADDR, allowed_ips=["0.0.0.0/0"])
    stranger.send_packet(ipv4_packet("100.64.0.9", B_IP, b"let me in"), pair.clock.now())
    datagram, _ = stranger.poll_transmit() or (b"", B_ADDR)
    pair.b.handle_datagram(datagram, ("198.18.0.9", 1), pair.clock.now())
    assert _drops(pair.b) == {"unknown_peer": 1}
    assert pair.b.poll_transmit() is None


def test_a_removed_peer_loses_its_sessions_at_once() -> None:
    pair = make_pair()
    _send(pair, b"before")
    pair.b.remove_peer(public_key(key("a")))
    _send(pair, b"after")
    assert pair.received(B_ADDR) == [ipv4_packet(A_IP, B_IP, b"before")]
    assert _drops(pair.b).get("unknown_index", 0) >= 1


def test_roaming_follows_the_last_authenticated_source() -> None:
    pair = make_pair()
    _send(pair, b"x")
    data = next(d for d, s, _ in pair.wire if s == A_ADDR and d[0] == TYPE_DATA)
    pair.a.send_packet(ipv4_packet(A_IP, B_IP, b"y"), pair.clock.now())
    fresh, _ = pair.a.poll_transmit() or (b"", A_ADDR)
    moved = ("198.18.5.5", 40000)
    pair.b.handle_datagram(fresh, moved, pair.clock.now())
    assert pair.b.endpoint_of(public_key(key("a"))) == moved
    # A replayed old packet from elsewhere neither arrives nor moves the endpoint.
    pair.b.handle_datagram(data, ("198.18.6.6", 1), pair.clock.now())
    assert pair.b.endpoint_of(public_key(key("a"))) == moved


def test_a_device_uses_the_noise_key_its_svid_binds() -> None:
    from datetime import UTC, datetime

    from umbranet.pki import (
        CertificateAuthority,
        SpiffeId,
        generate_noise_keypair,
        generate_tls_key,
        make_csr,
    )
    from umbranet.pki.svid import noise_public_key_of

    now = datetime(2026, 12, 4, tzinfo=UTC)
    ca = CertificateAuthority.create("acme.umbra", now)
    noise_private, noise_public = generate_noise_keypair()
    svid = ca.issue_svid(
        make_csr(generate_tls_key()),
        SpiffeId.for_identity("acme.umbra", "device", "alice"),
        noise_public,
        now,
    )

    class Identity:
        noise_private_key = noise_private

    device = Device.for_identity(Identity())
    assert device.public_key == noise_public_key_of(svid) == noise_public


def test_initiations_faster_than_the_flood_limit_are_dropped() -> None:
    pair = make_pair()
    a_private, b_public = StaticKey(key("a")), public_key(key("b"))
    first, _ = create_initiation(a_private, b_public, key("e1"), 1, tai64n(pair.clock.wall))
    pair.clock.advance(0.005)  # a newer timestamp, but 5 ms after the last one consumed
    later = tai64n(pair.clock.wall.replace(second=pair.clock.wall.second + 1))
    second, _ = create_initiation(a_private, b_public, key("e2"), 2, later)
    macs = CookieGenerator(b_public)
    pair.b.handle_datagram(macs.add_macs(first, 0.0), A_ADDR, pair.clock.now())
    pair.b.handle_datagram(macs.add_macs(second, 0.0), A_ADDR, pair.clock.now())
    assert _counts(pair.b)["tx_responses"] == 1
    assert _drops(pair.b) == {"initiation_flood": 1}


def _ipv6_packet(src: str, dst: str, payload: bytes) -> bytes:
    import ipaddress
    import struct

    header = struct.pack("!IHBB", 6 << 28, len(payload), 17, 64)
    return header + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload


def test_ipv6_packets_route_by_allowed_ips() -> None:
    pair = make_pair()
    pair.a.add_peer(public_key(key("b")), allowed_ips=["fd00:1::2/128"])
    pair.b.add_peer(public_key(key("a")), allowed_ips=["fd00:1::1/128"])
    packet = _ipv6_packet("fd00:1::1", "fd00:1::2", b"six")
    pair.a.send_packet(packet + bytes(5), pair.clock.now())  # trailing bytes are not the packet
    pair.pump()
    assert pair.received(B_ADDR) == [packet]
    assert pair.b.endpoint_of(public_key(key("a"))) == A_ADDR
    pair.a.send_packet(_ipv6_packet("fd00:1::1", "fd00:9::9", b"nowhere"), pair.clock.now())
    assert _drops(pair.a) == {"tx_no_route": 1}


@pytest.mark.parametrize("lost", [1, 2, 5, 17])
def test_lost_handshakes_are_retried_and_the_staged_packet_arrives(lost: int) -> None:
    pair = make_pair()
    dropped = {"n": 0}

    def drop_handshakes(data: bytes, src: object, dst: object) -> bool:
        if data[0] in (TYPE_INITIATION, TYPE_RESPONSE) and dropped["n"] < lost:
            dropped["n"] += 1
            return True
        return False

    pair.drop = drop_handshakes
    _send(pair, b"patience")
    assert pair.received(B_ADDR) == []
    pair.run(REKEY_TIMEOUT * (lost + 1) + 2)
    assert pair.received(B_ADDR) == [ipv4_packet(A_IP, B_IP, b"patience")]
    assert not [e for e in pair.events.get(A_ADDR, []) if isinstance(e, PeerSilent)]


def test_under_load_a_source_with_a_cookie_is_still_rate_limited() -> None:
    pair = make_pair(config=DeviceConfig(handshake_load_threshold=0))  # always under load
    b_public = public_key(key("b"))
    source = ("198.18.44.4", 4444)
    macs = CookieGenerator(b_public)

    def initiation(i: int) -> bytes:
        stamp = tai64n(pair.clock.wall)
        body, _ = create_initiation(StaticKey(key(f"s{i}")), b_public, key(f"se{i}"), i, stamp)
        return macs.add_macs(body, pair.clock.mono)

    pair.b.handle_datagram(initiation(0), source, pair.clock.now())
    reply, _ = pair.b.poll_transmit() or (b"", source)
    assert reply[0] == TYPE_COOKIE_REPLY and macs.consume_reply(reply, pair.clock.mono)
    for i in range(1, 11):  # ten at once, each with a valid MAC2
        pair.b.handle_datagram(initiation(i), source, pair.clock.now())
    drops = _drops(pair.b)
    assert drops["unknown_peer"] == 5  # the burst got through to the handshake (and failed)
    assert drops["rate_limited"] == 5
    pair.clock.advance(1.0)
    pair.b.handle_datagram(initiation(11), source, pair.clock.now())
    assert _drops(pair.b)["unknown_peer"] == 6  # refilled


def test_a_seeded_run_is_byte_for_byte_reproducible() -> None:
    def run() -> list[tuple[bytes, object, object]]:
        pair = make_pair(seed=5, keepalive=25)
        _send(pair, b"one")
        _send(pair, b"two", from_a=False)
        pair.run(300)  # rekeys, keepalives, jittered retransmits
        return pair.wire

    first, second = run(), run()
    assert len(first) > 10
    assert first == second
    assert first != make_pair_wire_with_other_seed()


def make_pair_wire_with_other_seed() -> list[tuple[bytes, object, object]]:
    pair = make_pair(seed=6, keepalive=25)
    _send(pair, b"one")
    return pair.wire
