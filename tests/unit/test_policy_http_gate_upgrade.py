"""The HTTP gate across a protocol switch: bytes behind an Upgrade or CONNECT request wait for
the server's answer; only a 101 (a 2xx for CONNECT) to an allowed upgrade opens a tunnel, any
other answer means the held bytes are judged as requests. Pipelining behind an upgrade that the
server ignored is the attack this closes (issue 9, item 5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.policy import Verdict
from umbranet.policy.http_gate import HttpGate


def only_get_public(method: str, path: str) -> Verdict:
    if method in ("GET", "HEAD") and (path == "/public" or path.startswith("/public/")):
        return Verdict.allow("allowed by http[0]")
    return Verdict.deny(f"no http rule allows {method} {path}")


WS = b"GET /public HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
H2C = b"GET /public HTTP/1.1\r\nHost: web\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
DELETE = b"DELETE /admin HTTP/1.1\r\nHost: web\r\n\r\n"
GET = b"GET /public/x HTTP/1.1\r\nHost: web\r\n\r\n"
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"
FRAMES = b"\x81\x05hello" + DELETE


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_a_request_pipelined_behind_an_ignored_upgrade_is_judged(size: int) -> None:
    gate = HttpGate(only_get_public)
    first = gate.feed(WS + DELETE)
    assert first.passed == WS and first.stop is None
    assert gate.holding  # DELETE waits for the server's answer to the upgrade request
    released = b""
    results = [gate.feed_response(piece) for piece in pieces(NOT_FOUND, size)]
    for result in results[:-1]:
        assert result.passed == b"" and result.stop is None  # not before the answer is whole
        released += result.passed
    last = results[-1]
    assert last.passed == b""
    assert last.stop is not None and (last.stop.status, last.stop.code) == (403, "http_denied")
    assert "DELETE /admin" in last.stop.reason


def test_an_allowed_request_behind_an_ignored_upgrade_passes_after_the_answer() -> None:
    gate = HttpGate(only_get_public)
    assert gate.feed(WS + GET).passed == WS
    result = gate.feed_response(NOT_FOUND)
    assert result.passed == GET and result.stop is None and not gate.holding
    assert gate.requests == 2


@pytest.mark.parametrize("size", [1, 5, 1000])
def test_only_a_101_to_an_allowed_upgrade_opens_the_tunnel(size: int) -> None:
    gate = HttpGate(only_get_public)
    assert gate.feed(WS + FRAMES).passed == WS
    released = b""
    for piece in pieces(SWITCHED, size):
        result = gate.feed_response(piece)
        assert result.stop is None
        released += result.passed
    assert released == FRAMES  # the tunnel passes WebSocket frames unexamined
    assert gate.feed(DELETE).passed == DELETE
    assert gate.feed_response(b"\x81\x02ok").stop is None


def test_interim_answers_do_not_end_the_wait() -> None:
    gate = HttpGate(only_get_public)
    gate.feed(WS + FRAMES)
    result = gate.feed_response(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert result.passed == b"" and gate.holding
    assert gate.feed_response(SWITCHED).passed == FRAMES


def test_answers_are_matched_to_requests_in_order() -> None:
    """A HEAD answer has no body although it names a length; the next answer is the 101."""
    gate = HttpGate(only_get_public)
    head = b"HEAD /public HTTP/1.1\r\nHost: web\r\n\r\n"
    assert gate.feed(head + GET + WS + FRAMES).passed == head + GET + WS
    gate.feed_response(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    result = gate.feed_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nHTTP/\r\n0\r\n\r\n"  # a body that looks like an answer is a body
    )
    assert result.passed == b"" and gate.holding
    assert gate.feed_response(SWITCHED).passed == FRAMES


@pytest.mark.parametrize("upgrade", [b"h2c", b"h2c, websocket", b"TLS/1.0"])
def test_an_upgrade_the_gate_cannot_follow_is_refused(upgrade: bytes) -> None:
    gate = HttpGate(only_get_public)
    request = H2C.replace(b"h2c", upgrade)
    result = gate.feed(request + DELETE)
    assert result.passed == b""
    assert result.stop is not None
    assert (result.stop.status, result.stop.code) == (403, "http_upgrade_denied")


def test_a_switch_nobody_asked_for_stops_the_stream() -> None:
    gate = HttpGate(only_get_public)
    assert gate.feed(GET).passed == GET
    result = gate.feed_response(SWITCHED)
    assert result.stop is not None and result.stop.code == "http_upgrade_unverified"
    assert gate.feed(FRAMES).passed == b""


def test_a_switch_to_another_protocol_than_allowed_stops_the_stream() -> None:
    gate = HttpGate(only_get_public)
    gate.feed(WS + FRAMES)
    result = gate.feed_response(SWITCHED.replace(b"Upgrade: websocket", b"Upgrade: h2c"))
    assert result.passed == b""
    assert result.stop is not None and result.stop.code == "http_upgrade_unverified"


def test_an_unreadable_answer_never_confirms_a_switch() -> None:
    gate = HttpGate(only_get_public)
    gate.feed(WS + FRAMES)
    result = gate.feed_response(b"this is not HTTP\r\n\r\n")
    assert result.passed == b""
    assert result.stop is not None and result.stop.code == "http_upgrade_unverified"


def test_connect_tunnels_only_after_a_2xx() -> None:
    gate = HttpGate(lambda method, path: Verdict.allow("all"))
    connect = b"CONNECT db:5432 HTTP/1.1\r\nHost: db\r\n\r\n"
    assert gate.feed(connect + DELETE).passed == connect
    refused = gate.feed_response(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    assert refused.passed == DELETE  # stayed on HTTP: judged (and allowed) as a request
    gate = HttpGate(lambda method, path: Verdict.allow("all"))
    gate.feed(connect + b"\x00raw bytes")
    assert gate.feed_response(b"HTTP/1.1 200 OK\r\n\r\n").passed == b"\x00raw bytes"


# -- a model: pipelined requests, some asking for WebSocket, answered by a scripted server ---

REQUEST = st.tuples(
    st.sampled_from(["GET", "POST", "DELETE"]),
    st.sampled_from(["/public", "/public/ws", "/admin"]),
    st.booleans(),  # asks for an upgrade
    st.binary(max_size=30),  # body
    st.sampled_from(["switch", "length", "chunked", "head-like"]),  # how the server answers
)


def encode(method: str, path: str, upgrade: bool, body: bytes) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: web\r\n"
    if upgrade:
        head += "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def answer(kind: str, upgrade: bool) -> bytes:
    if kind == "switch" and upgrade:
        return SWITCHED
    if kind == "chunked":
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    if kind == "head-like":
        return b"HTTP/1.1 204 No Content\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nHTTP/1.1 200"


@settings(max_examples=300, deadline=None)
@given(st.lists(REQUEST, min_size=1, max_size=6), st.integers(1, 50), st.integers(1, 50))
def test_the_gate_matches_a_model_of_upgrade_and_pipelining(
    requests: list[tuple[str, str, bool, bytes, str]], in_size: int, out_size: int
) -> None:
    raws = [encode(m, p, u, b) for m, p, u, b, _ in requests]
    wire = b"".join(raws)
    ends = [sum(map(len, raws[: i + 1])) for i in range(len(raws))]
    gate = HttpGate(only_get_public)
    passed = b""
    stop = None
    for piece in pieces(wire, in_size):
        result = gate.feed(piece)
        passed += result.passed
        stop = stop or result.stop
    # The server answers each request once it has received it whole, in order.
    answered = 0
    switched = False
    while stop is None and not switched and answered < len(raws) and len(passed) >= ends[answered]:
        _, _, upgrade, _, kind = requests[answered]
        if upgrade:
            # Nothing behind a switch request reaches the server before its answer.
            assert len(passed) == ends[answered]
        for piece in pieces(answer(kind, upgrade), out_size):
            result = gate.feed_response(piece)
            passed += result.passed
            stop = stop or result.stop
        switched = upgrade and kind == "switch"
        answered += 1
    denied = next(
        (i for i, (m, p, *_) in enumerate(requests) if not only_get_public(m, p).allowed), None
    )
    first_switch = next(
        (i for i, (_, _, u, _, k) in enumerate(requests) if u and k == "switch"), None
    )
    if first_switch is not None and (denied is None or first_switch < denied):
        assert stop is None and passed == wire  # after the 101 the stream is not HTTP
    elif denied is not None:
        assert passed == wire[: ends[denied - 1] if denied else 0]
        assert stop is not None and stop.code == "http_denied"
    else:
        assert stop is None and passed == wire
