"""The kernel names the owner of one loopback TCP socket (netlink sock_diag), and the codec
refuses what is not an answer to its own question."""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umbranet.agent.peeruid import read_owner_uid
from umbranet.agent.sockdiag import (
    REQUEST_SIZE,
    SOCK_DIAG_BY_FAMILY,
    encode_request,
    parse_response,
    query_owner_uid,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="sock_diag is Linux's")

Address = tuple[str, int]


@pytest.fixture
def connection() -> Iterator[tuple[Address, Address]]:
    """(client end, server end) of a live loopback connection this process owns."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        try:
            yield client.getsockname(), client.getpeername()
        finally:
            accepted.close()
            client.close()


def test_the_kernel_names_this_process_as_the_owner(connection: tuple[Address, Address]) -> None:
    client, server = connection
    assert query_owner_uid(client, server) == os.getuid()
    assert query_owner_uid(client, server) == read_owner_uid(client, server)


def test_a_socket_that_does_not_exist_has_no_owner(connection: tuple[Address, Address]) -> None:
    client, server = connection
    assert query_owner_uid(client, (server[0], server[1] ^ 1)) is None


def test_the_ends_are_not_interchangeable(connection: tuple[Address, Address]) -> None:
    """Asked the other way round, the kernel finds the server's accepted socket: the agent
    must ask with the client's end as the local one, as `Interceptor` does."""
    client, server = connection
    assert query_owner_uid(server, client) == os.getuid()  # the accepted socket, ours too


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a socket as another user")
def test_another_users_socket_is_named_as_theirs() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port_in, port_out = os.pipe()  # child -> parent: its socket's port
        done_in, done_out = os.pipe()  # parent -> child: the check is over
        child = os.fork()
        if child == 0:  # pragma: no cover - the child process
            os.setuid(65534)
            sock = socket.create_connection(server.getsockname())
            os.write(port_out, struct.pack("!H", sock.getsockname()[1]))
            os.read(done_in, 1)
            os._exit(0)
        try:
            (port,) = struct.unpack("!H", os.read(port_in, 2))
            accepted, _ = server.accept()
            with accepted:
                assert query_owner_uid(("127.0.0.1", port), server.getsockname()) == 65534
        finally:
            os.write(done_out, b"x")
            os.waitpid(child, 0)
            for fd in (port_in, port_out, done_in, done_out):
                os.close(fd)


def test_a_mapped_ipv6_spelling_asks_the_ipv4_socket(connection: tuple[Address, Address]) -> None:
    client, server = connection
    mapped = (f"::ffff:{client[0]}", client[1]), (f"::ffff:{server[0]}", server[1])
    assert query_owner_uid(*mapped) == os.getuid()


def test_the_request_has_the_kernel_layout() -> None:
    request = encode_request(("127.0.0.1", 40000), ("127.0.0.2", 8080), seq=7)
    assert len(request) == REQUEST_SIZE == 72
    length, kind, _, seq, _ = struct.unpack_from("=IHHII", request)
    assert (length, kind, seq) == (72, SOCK_DIAG_BY_FAMILY, 7)
    family, protocol = request[16], request[17]
    assert (family, protocol) == (socket.AF_INET, socket.IPPROTO_TCP)
    assert struct.unpack_from("!HH", request, 24) == (40000, 8080)
    assert request[28:32] == bytes([127, 0, 0, 1]) and request[44:48] == bytes([127, 0, 0, 2])


def _answer(seq: int, uid: int, kind: int = SOCK_DIAG_BY_FAMILY) -> bytes:
    body = bytes(4 + 48) + struct.pack("=IIIII", 0, 0, 0, uid, 1)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body


def test_an_answer_to_another_question_or_an_error_is_no_owner() -> None:
    assert parse_response(_answer(3, 1000), seq=3) == 1000
    assert parse_response(_answer(4, 1000), seq=3) is None
    assert parse_response(_answer(3, 1000, kind=2), seq=3) is None
    assert parse_response(_answer(3, 1000)[:-4], seq=3) is None


@given(st.binary(max_size=200), st.integers(0, 2**32 - 1))
def test_garbage_never_raises(data: bytes, seq: int) -> None:
    result = parse_response(data, seq)
    assert result is None or 0 <= result < 2**32
