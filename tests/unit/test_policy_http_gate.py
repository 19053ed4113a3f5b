"""The hosting endpoint's HTTP gate: every request head on a connection is judged, bodies are
framed exactly, ambiguous framing is refused, and random input never crashes it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.policy import Verdict
from umbranet.policy.http_gate import GateStop, HttpGate, render_stop


def only_get_public(method: str, path: str) -> Verdict:
    if method == "GET" and (path == "/public" or path.startswith("/public/")):
        return Verdict.allow("allowed by http[0]")
    return Verdict.deny(f"no http rule allows {method} {path}")


def run(data: bytes, chunk: int | None = None) -> tuple[bytes, GateStop | None, int]:
    """Feed ``data`` (whole, or in pieces of ``chunk`` bytes); what passed, the stop, heads."""
    gate = HttpGate(only_get_public)
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    passed = b""
    for piece in pieces:
        result = gate.feed(piece)
        passed += result.passed
        if result.stop is not None:
            return passed, result.stop, gate.requests
    return passed, None, gate.requests


GET = b"GET /public/a?x=1 HTTP/1.1\r\nHost: web\r\n\r\n"
POST_ADMIN = b"POST /admin HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello"
GET_WITH_BODY = b"GET /public HTTP/1.1\r\nContent-Length: 11\r\n\r\nPOST /admin"
CHUNKED = (
    b"GET /public HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nPOST \r\n6\r\n/admin\r\n0\r\nX-Trailer: 1\r\n\r\n"
)


@pytest.mark.parametrize("chunk", [None, 1, 3, 7])
def test_allowed_requests_pass_whole_in_any_pieces(chunk: int | None) -> None:
    data = GET + GET_WITH_BODY + CHUNKED + b"\r\n" + GET
    passed, stop, heads = run(data, chunk)
    assert stop is None
    assert passed == data.replace(b"\r\n" + GET, GET)  # blank lines between requests dropped
    assert heads == 4  # bodies that look like requests are bodies, not heads


@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_a_refused_request_stops_the_stream_after_the_allowed_ones(chunk: int | None) -> None:
    passed, stop, heads = run(GET + POST_ADMIN + GET, chunk)
    assert passed == GET
    assert stop is not None
    assert (stop.status, stop.code) == (403, "http_denied")
    assert stop.reason == "no http rule allows POST /admin"
    assert heads == 2


def test_nothing_passes_after_a_stop() -> None:
    gate = HttpGate(only_get_public)
    assert gate.feed(POST_ADMIN).stop is not None
    assert gate.feed(GET).passed == b""


def test_a_head_is_held_back_until_it_is_complete() -> None:
    gate = HttpGate(only_get_public)
    assert gate.feed(GET[:-2]).passed == b""
    assert gate.feed(GET[-2:]).passed == GET


def test_absolute_form_targets_are_judged_by_their_path() -> None:
    _, stop, _ = run(b"GET http://web/admin HTTP/1.1\r\n\r\n")
    assert stop is not None and stop.code == "http_denied"
    passed, stop, _ = run(b"GET http://web/public HTTP/1.1\r\n\r\n")
    assert stop is None and passed.startswith(b"GET http://web/public")


MALFORMED = [
    (b"GET /public\r\n\r\n", "malformed request line"),
    (b"GET /public HTTP/2.0\r\n\r\n", "malformed request line"),
    (b"G(T /public HTTP/1.1\r\n\r\n", "malformed request line"),
    (b"GET public HTTP/1.1\r\n\r\n", "malformed request target"),
    (b"GET /public HTTP/1.1\r\nno colon\r\n\r\n", "malformed header line"),
    (b"GET /public HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "malformed Content-Length"),
    (b"GET /public HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     "ambiguous request body length"),
    (b"GET /public HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
     "ambiguous request body length"),
    (b"GET /public HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
     "request body length unknown"),
    (b"GET /public HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
    (b"GET /public HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXY", "not followed by CRLF"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_malformed_or_ambiguous_requests_get_400(data: bytes, reason: str) -> None:
    _, stop, _ = run(data)
    assert stop is not None
    assert (stop.status, stop.code) == (400, "http_malformed")
    assert reason in stop.reason


def test_an_endless_head_gets_431_without_growing_forever() -> None:
    gate = HttpGate(only_get_public, max_head=1024)
    result = gate.feed(b"GET /public HTTP/1.1\r\n")
    for _ in range(100):
        result = gate.feed(b"X-Filler: " + b"a" * 100 + b"\r\n")
        if result.stop is not None:
            break
    assert result.stop is not None and result.stop.status == 431


def test_the_answer_carries_the_reason_and_closes() -> None:
    response = render_stop(GateStop(403, "http_denied", "denied by http[2]: bob\r\nX: y"))
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"Connection: close" in head
    assert b"X-Umbra-Reason: denied by http[2]: bob  X: y" in head  # no header injection
    assert body == b"denied by http[2]: bob\r\nX: y\n"
    assert f"Content-Length: {len(body)}".encode() in head


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_random_input_only_passes_or_stops(pieces: list[bytes]) -> None:
    gate = HttpGate(only_get_public, max_head=512)
    passed = b""
    for piece in pieces:
        result = gate.feed(piece)
        passed += result.passed
        if result.stop is not None:
            assert result.stop.status in (400, 403, 431)
            break
    # Whatever passed is a prefix of the input with only inter-request blank lines removed.
    assert len(passed) <= sum(map(len, pieces))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["GET", "POST", "PUT"]),
            st.sampled_from(["/public", "/public/x", "/admin", "/"]),
            st.binary(max_size=40),
            st.booleans(),
        ),
        min_size=1,
        max_size=5,
    ),
    st.integers(min_value=1, max_value=64),
)
def test_the_gate_passes_exactly_the_allowed_prefix(
    requests: list[tuple[str, str, bytes, bool]], chunk: int
) -> None:
    wire = b""
    expected = b""
    refused = False
    for method, path, body, chunked in requests:
        head = f"{method} {path} HTTP/1.1\r\nHost: web\r\n".encode()
        if chunked:
            encoded = (f"{len(body):x}\r\n".encode() + body + b"\r\n") if body else b""
            raw = head + b"Transfer-Encoding: chunked\r\n\r\n" + encoded + b"0\r\n\r\n"
        else:
            raw = head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        wire += raw
        if not refused and only_get_public(method, path).allowed:
            expected += raw
        else:
            refused = True
    passed, stop, _ = run(wire, chunk)
    assert passed == expected
    assert (stop is not None) == refused
