"""The socket patch claims only ``.umbra`` names and configured addresses, hands out stable
loopback placeholders, refuses a second patch, and unpatch restores the socket module exactly."""

from __future__ import annotations

import _socket
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from umbranet.integrations import monkeypatch as mp
from umbranet.integrations.patch_names import PLACEHOLDER_NETWORK, AddressBook, parse_address

_PATCHED_METHODS = (
    "connect",
    "connect_ex",
    "bind",
    "listen",
    "accept",
    "close",
    "setsockopt",
    "getsockopt",
    "getpeername",
    "getsockname",
)


class _NoOverlay:
    """A context that fails the test if anything is dialed or hosted through it."""

    def call(self, *args: Any, **kwargs: Any) -> Any:
        for arg in args:
            close = getattr(arg, "close", None)
            if close is not None:
                close()  # the coroutine, so no "never awaited" warning hides the failure
        raise AssertionError("an address the patch does not claim reached the overlay")


@pytest.fixture
def patched() -> Iterator[None]:
    mp.monkeypatch(
        _NoOverlay(),  # type: ignore[arg-type]
        dial={"db.internal:5432": "pg", "10.9.8.7:6379": "cache"},
        host={"127.0.0.1:1": "web"},
    )
    try:
        yield
    finally:
        mp.unpatch()


def test_targets_configured_pairs_and_umbra_names_only() -> None:
    dial = {"db.internal:5432": "postgres-svc"}
    assert mp.target_of("db.internal", 5432, dial) == "postgres-svc"
    assert mp.target_of("DB.Internal", 5432, dial) == "postgres-svc"
    assert mp.target_of("db.internal", 5433, dial) is None
    assert mp.target_of("web.umbra", 80, dial) == "web"
    assert mp.target_of(".umbra", 80, dial) is None
    assert mp.target_of("example.org", 443, dial) is None


def test_addresses_are_parsed_strictly() -> None:
    assert parse_address("[fd00::1]:5432") == ("fd00::1", 5432)
    assert parse_address("*:8080") == ("*", 8080)
    for bad in ("db.internal", "db:0", "db:70000", ":80", "db:http"):
        with pytest.raises(ValueError, match="host:port"):
            parse_address(bad)


def test_placeholders_are_stable_loopback_and_map_back() -> None:
    book = AddressBook.from_config({"db.internal:5432": "pg"})
    first = book.placeholder("db.umbra")
    assert book.placeholder("DB.umbra") == first
    second = book.placeholder("db.internal")
    assert first != second
    import ipaddress

    assert ipaddress.ip_address(first) in PLACEHOLDER_NETWORK
    assert ipaddress.ip_address(first).is_loopback
    assert book.name_of(first) == "db.umbra"
    assert book.name_of(f"::ffff:{second}") == "db.internal"
    assert book.name_of("127.0.0.1") is None


def test_getaddrinfo_answers_placeholders_and_passes_other_names(patched: None) -> None:
    answer = socket.getaddrinfo("db.umbra", 5432, type=socket.SOCK_STREAM)
    assert len(answer) == 1
    family, kind, proto, _, (address, port) = answer[0]
    assert (family, kind, proto, port) == (socket.AF_INET, socket.SOCK_STREAM, 6, 5432)
    assert address.startswith("127.85.")
    assert socket.gethostbyname("db.umbra") == address
    v6 = socket.getaddrinfo("db.internal", "5432", socket.AF_INET6)
    assert v6[0][0] == socket.AF_INET6 and v6[0][4][0].startswith("::ffff:127.85.")
    # Other names go to the real resolver (localhost: no query leaves the host).
    assert socket.getaddrinfo("localhost", 80)[0][4][0] in ("127.0.0.1", "::1")
    # A configured pair claims its name only at its port.
    book = AddressBook.from_config({"db.internal:5432": "pg"})
    assert book.answers_for("db.internal", 5432) and not book.answers_for("db.internal", 80)
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("db.umbra", 53, type=socket.SOCK_DGRAM)


def test_unconfigured_loopback_traffic_passes_through(patched: None) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    try:
        with socket.create_connection(("localhost", port), timeout=5) as client:
            conn, _ = server.accept()
            client.sendall(b"plain")
            assert conn.recv(5) == b"plain"
            assert client.getpeername()[1] == port
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.close()
        raw = socket.socket()
        assert raw.connect_ex(("127.0.0.1", port)) == 0
        raw.close()
    finally:
        server.close()
    assert mp.statistics().get("dialed", 0) == 0


def test_a_placeholder_at_an_unconfigured_port_is_refused_and_counted(patched: None) -> None:
    address = socket.getaddrinfo("db.internal", 5432)[0][4][0]
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError, match="port_not"):
        sock.connect((address, 5433))
    with socket.socket() as sock:
        assert sock.connect_ex(("127.85.200.1", 80)) == 111  # ECONNREFUSED
    stats = mp.statistics()
    assert stats["refused_port_not_configured"] == 1
    assert stats["refused_unknown_placeholder"] == 1


def test_patching_twice_is_refused(patched: None) -> None:
    with pytest.raises(RuntimeError, match="already active"):
        mp.monkeypatch(_NoOverlay())  # type: ignore[arg-type]
    assert mp.is_patched()


def test_unpatch_restores_the_socket_module_exactly() -> None:
    module_before = {name: getattr(socket, name) for name in ("getaddrinfo", "gethostbyname")}
    class_before = dict(socket.socket.__dict__)
    create_connection = socket.create_connection
    mp.monkeypatch(_NoOverlay(), dial={"db.internal:5432": "pg"})  # type: ignore[arg-type]
    assert socket.getaddrinfo is not module_before["getaddrinfo"]
    assert all(name in socket.socket.__dict__ for name in _PATCHED_METHODS)
    mp.unpatch()
    assert {name: getattr(socket, name) for name in module_before} == module_before
    assert dict(socket.socket.__dict__) == class_before
    assert socket.socket.connect is socket.socket.__mro__[1].connect  # type: ignore[attr-defined]
    assert socket.create_connection is create_connection
    assert not mp.is_patched() and mp.statistics() == {}
    mp.unpatch()  # a no-op when nothing is patched


def test_bind_to_a_hosted_address_binds_nothing_in_the_kernel() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.monkeypatch(_NoOverlay(), host={f"127.0.0.1:{port}": "web"})  # type: ignore[arg-type]
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            assert sock.getsockname() == ("127.0.0.1", port)
            # The port is still free in the kernel (a C-level socket, which the patch does not
            # see, binds and listens on it): the patch took nothing.
            other = _socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                other.bind(("127.0.0.1", port))
                other.listen()
            finally:
                other.close()
        with socket.socket() as unrelated:  # a different address binds for real
            unrelated.bind(("127.0.0.1", 0))
            assert unrelated.getsockname()[1] != 0
    finally:
        mp.unpatch()


def test_tcp_options_are_accepted_on_a_bridged_socket_only() -> None:
    """A socket claiming AF_INET over a Unix socket (what the patch makes) takes TCP options."""
    mp.monkeypatch(_NoOverlay())  # type: ignore[arg-type]
    try:
        ours, theirs = socket.socketpair()
        bridged = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        import os

        os.dup2(theirs.fileno(), bridged.fileno(), inheritable=False)
        bridged.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert bridged.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        with pytest.raises(OSError):
            ours.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for sock in (ours, theirs, bridged):
            sock.close()
    finally:
        mp.unpatch()
