"""Link TLS objects call OpenSSL without a Python frame per record, and behave the same."""

from __future__ import annotations

import ssl

import pytest

from umbranet.aio import tls
from umbranet.router.server import _counting_ssl_objects
from umbranet.testing import LocalNetwork

NET = LocalNetwork()


def _pair() -> tuple[ssl.SSLObject, ssl.SSLObject, list[ssl.MemoryBIO]]:
    client_ctx = tls.link_client_context(NET.identity("alice"))
    server_ctx = tls.link_server_context(NET.identity("r1", kind="router"))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    return client, server, [c_in, c_out, s_in, s_out]


def _pump(bios: list[ssl.MemoryBIO]) -> None:
    c_in, c_out, s_in, s_out = bios
    s_in.write(c_out.read())
    c_in.write(s_out.read())


def _handshake(client: ssl.SSLObject, server: ssl.SSLObject, bios: list[ssl.MemoryBIO]) -> None:
    for _ in range(10):  # bounded: TLS 1.3 needs two flights each way at most
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        _pump(bios)
        if done == 2:
            return
    raise AssertionError("handshake did not finish")


def test_link_contexts_hand_out_objects_whose_record_calls_are_openssls_own() -> None:
    client, server, _ = _pair()
    for obj in (client, server):
        assert isinstance(obj, tls.DirectSSLObject)
        raw = obj._sslobj  # type: ignore[attr-defined]
        # Bound methods of the C object: no Python wrapper frame in between.
        assert obj.read.__self__ is raw
        assert obj.write.__self__ is raw
        assert obj.pending.__self__ is raw


def test_records_move_both_ways_as_with_the_stock_object() -> None:
    client, server, bios = _pair()
    _handshake(client, server, bios)
    assert server.getpeercert(binary_form=True)  # the client certificate was required
    payload = bytes(range(256)) * 300  # several records
    assert client.write(payload) == len(payload)
    _pump(bios)
    got = b""
    buffer = bytearray(4096)
    for _ in range(1000):  # bounded: a record at most per read
        if len(got) == len(payload):
            break
        try:
            count = server.read(len(buffer), buffer)  # into a buffer, as the loop reads
        except ssl.SSLWantReadError:
            break
        got += bytes(buffer[:count])
    assert got == payload
    assert server.pending() == 0
    server.write(b"pong")
    _pump(bios)
    assert client.read(1024) == b"pong"  # a size alone returns the bytes


def test_a_read_with_nothing_buffered_raises_want_read_like_the_stock_object() -> None:
    client, server, bios = _pair()
    _handshake(client, server, bios)
    with pytest.raises(ssl.SSLWantReadError):
        server.read(1024)


def test_the_routers_counting_objects_keep_the_direct_calls_and_still_count_failures() -> None:
    failures: list[ssl.SSLError] = []
    server_ctx = tls.link_server_context(NET.identity("r1", kind="router"))
    server_ctx.sslobject_class = _counting_ssl_objects(failures.append)
    # A client that trusts the router's CA but holds a certificate of another CA.
    stranger_ctx = tls.link_client_context(LocalNetwork().identity("mallory"))
    stranger_ctx.load_verify_locations(cadata=NET.bundle.ca_pem)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = stranger_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    assert server.read.__self__ is server._sslobj  # type: ignore[attr-defined]
    with pytest.raises(ssl.SSLError):
        _handshake(client, server, [c_in, c_out, s_in, s_out])
    assert failures, "the refused handshake was counted"
