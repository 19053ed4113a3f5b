"""`WireGuardDriver.set_paths` keeps what the path set already proved.

The agent calls `set_paths` on every view refresh with the controller's published endpoint
(as a `direct` path) and the relay. Behind an easy NAT that endpoint is often the very
address NAT traversal already proved as a `punched` path; re-publishing it must not throw
the proof away, or every refresh would drop the peer back onto the relay until the path
is proven again.
"""

from __future__ import annotations

import socket

from tests.unit.test_wireguard_driver import SocketPort
from tests.wireguard_harness import key
from umbranet.aio.wg_driver import WireGuardDriver
from umbranet.clock import system_clock
from umbranet.proto.paths import Path, PathKind, relay_address
from umbranet.proto.wireguard import Device
from umbranet.proto.wireguard.crypto import public_key

PEER = public_key(key("b"))
ADDRESS = ("192.0.2.7", 41641)


def _driver() -> tuple[WireGuardDriver, socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    device = Device(key("a"))
    device.add_peer(PEER, endpoint=relay_address(PEER), allowed_ips=["10.9.0.2/32"])
    return WireGuardDriver(device, sock, SocketPort(), gso=False, gro=False), sock


def _prove(driver: WireGuardDriver, path: Path) -> None:
    pathset = driver.path_set(PEER)
    assert pathset is not None
    mono = system_clock.now().mono
    pathset.add(path, mono)
    pathset.handle_sent(path.address, mono)
    pathset.handle_authenticated(path.address, mono)
    assert pathset.proven(path.address)


def test_republished_endpoint_keeps_a_proven_punched_path() -> None:
    driver, sock = _driver()
    try:
        relay = Path(PathKind.RELAY, relay_address(PEER))
        driver.set_paths(PEER, [relay])
        _prove(driver, Path(PathKind.PUNCHED, ADDRESS))
        assert driver.current_path(PEER) == Path(PathKind.PUNCHED, ADDRESS)
        # the next view refresh publishes the same address as the peer's endpoint
        driver.set_paths(PEER, [Path(PathKind.DIRECT, ADDRESS), relay])
        pathset = driver.path_set(PEER)
        assert pathset is not None and pathset.proven(ADDRESS)
        current = driver.current_path(PEER)
        assert current is not None and current.address == ADDRESS
    finally:
        sock.close()


def test_unchanged_paths_keep_their_proof_across_refreshes() -> None:
    driver, sock = _driver()
    try:
        direct = Path(PathKind.DIRECT, ADDRESS)
        relay = Path(PathKind.RELAY, relay_address(PEER))
        driver.set_paths(PEER, [direct, relay])
        _prove(driver, direct)
        for _ in range(3):
            driver.set_paths(PEER, [direct, relay])
        pathset = driver.path_set(PEER)
        assert pathset is not None and pathset.proven(ADDRESS)
        assert driver.current_path(PEER) == direct
    finally:
        sock.close()


def test_a_path_dropped_from_the_view_goes_but_a_moved_endpoint_starts_unproven() -> None:
    driver, sock = _driver()
    try:
        relay = Path(PathKind.RELAY, relay_address(PEER))
        driver.set_paths(PEER, [Path(PathKind.DIRECT, ADDRESS), relay])
        _prove(driver, Path(PathKind.DIRECT, ADDRESS))
        moved = Path(PathKind.DIRECT, ("192.0.2.8", 41641))
        driver.set_paths(PEER, [moved, relay])
        pathset = driver.path_set(PEER)
        assert pathset is not None
        assert not pathset.has(ADDRESS)
        assert not pathset.proven(moved.address)
        assert driver.current_path(PEER) == relay
    finally:
        sock.close()
