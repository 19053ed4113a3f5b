"""The local API: the pure request parser, and the server on a real Unix socket answering
garbage with an HTTP error and a reason while it keeps serving."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umbranet.agent.localapi import (
    MAX_BODY,
    MAX_HEAD,
    AgentApiError,
    ApiError,
    LocalApiClient,
    LocalApiServer,
    Request,
    parse_head,
    render,
)
from umbranet.agent.stats import Counters


def test_a_request_head_parses() -> None:
    request = parse_head(
        b"GET /v1/whois?addr=127.0.0.1%3A5000&x=1 HTTP/1.1\r\nHost: a\r\nX-Y:  z \r\n\r\n"
    )
    assert (request.method, request.path) == ("GET", "/v1/whois")
    assert request.query == {"addr": "127.0.0.1:5000", "x": "1"}
    assert request.headers == {"host": "a", "x-y": "z"}


@pytest.mark.parametrize(
    ("head", "code"),
    [
        (b"\x00\xffgarbage\r\n\r\n", "bad_request"),
        (b"GET /\r\n\r\n", "bad_request"),
        (b"get / HTTP/1.1\r\n\r\n", "bad_request"),
        (b"GET / HTTP/2\r\n\r\n", "bad_version"),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", "bad_request"),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", "bad_header"),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "bad_header"),
        (b"GET / HTTP/1.1\r\n", "incomplete_request"),
        (b"GET /\xe9 HTTP/1.1\r\n\r\n", "bad_request"),
    ],
)
def test_bad_heads_are_refused_with_a_code(head: bytes, code: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_head(head)
    assert caught.value.code == code
    assert caught.value.status == 400


@given(st.binary(max_size=300))
def test_parser_accepts_or_refuses_any_bytes(data: bytes) -> None:
    try:
        request = parse_head(data + b"\r\n\r\n")
    except ApiError as exc:
        assert 400 <= exc.status < 500
        return
    assert request.path.startswith("/")


@given(
    st.sampled_from(["GET", "POST", "DELETE"]),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789/-_", max_size=30),
    st.dictionaries(
        st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12),
        st.text("abcdefghijklmnopqrstuvwxyz0123456789 .:/", max_size=30).map(str.strip),
        max_size=5,
    ),
)
def test_well_formed_requests_round_trip(method: str, path: str, headers: dict[str, str]) -> None:
    lines = [f"{method} /{path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    request = parse_head(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert (request.method, request.path, dict(request.headers)) == (method, f"/{path}", headers)


def test_render_is_a_complete_json_response() -> None:
    response = render(404, {"error": {"code": "x", "message": "y"}})
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body)["error"]["code"] == "x"


async def _handler(request: Request) -> tuple[int, Any]:
    if request.path == "/missing":
        raise ApiError(404, "not_found", "nothing here")
    if request.path == "/boom":
        raise RuntimeError("a bug")
    return 200, {"path": request.path, "query": dict(request.query), "body": request.json()}


async def _exchange(path: Path, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    if writer.can_write_eof():
        writer.write_eof()
    answer = await reader.read()
    writer.close()
    return answer


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_server_answers_garbage_with_reasons_and_keeps_serving(tmp_path: Path) -> None:
    socket_path = tmp_path / "agent.sock"
    counters = Counters()

    async def main() -> dict[str, int]:
        server = LocalApiServer(socket_path, _handler, counters)
        await server.start()
        try:
            assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
            cases = {
                b"\x16\x03\x01garbage\r\n\r\n": 400,
                b"GET /x HTTP/1.1\r\nHost": 400,
                b"A" * (MAX_HEAD + 10): 431,
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n": 501,
                f"POST / HTTP/1.1\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode(): 413,
                b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}": 400,
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n[1]": 400,
                b"GET /missing HTTP/1.1\r\n\r\n": 404,
                b"GET /boom HTTP/1.1\r\n\r\n": 500,
            }
            for data, status in cases.items():
                answer = await _exchange(socket_path, data)
                assert _status(answer) == status, (data[:40], answer[:200])
                assert b'"code"' in answer
            silent = await _exchange(socket_path, b"")
            assert silent == b""
            body = b'{"a": 1}'
            answer = await _exchange(
                socket_path,
                b"POST /ok?q=1 HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
            )
            assert _status(answer) == 200
            assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
                "path": "/ok",
                "query": {"q": "1"},
                "body": {"a": 1},
            }
            client = LocalApiClient(socket_path)
            loop = asyncio.get_running_loop()
            got = await loop.run_in_executor(None, lambda: client.post("/ok", {"b": 2}))
            assert got["body"] == {"b": 2}
            with pytest.raises(AgentApiError) as caught:
                await loop.run_in_executor(None, lambda: client.get("/missing"))
            assert (caught.value.code, caught.value.status) == ("not_found", 404)
            second = LocalApiServer(socket_path, _handler, Counters())
            with pytest.raises(ApiError) as running:
                await second.start()
            assert running.value.code == "already_running"
        finally:
            await server.close()
        assert not socket_path.exists()
        return counters.snapshot()

    counts = asyncio.run(main())
    refused = {k: v for k, v in counts.items() if k.startswith("api_bad_request.")}
    assert set(refused) == {
        "api_bad_request.bad_request",
        "api_bad_request.incomplete_request",
        "api_bad_request.head_too_large",
        "api_bad_request.chunked_unsupported",
        "api_bad_request.body_too_large",
        "api_bad_request.incomplete_body",
    }
    assert counts["api_error.bad_json"] == 1
    assert counts["api_error.internal_error"] == 1


def test_a_stale_socket_file_is_replaced_and_a_missing_agent_is_reported(tmp_path: Path) -> None:
    socket_path = tmp_path / "agent.sock"
    with pytest.raises(AgentApiError) as caught:
        LocalApiClient(socket_path).get("/v1/status")
    assert caught.value.code == "agent_not_running"
    socket_path.write_text("stale")

    async def main() -> None:
        server = LocalApiServer(socket_path, _handler, Counters())
        await server.start()
        answer = await _exchange(socket_path, b"GET /ok HTTP/1.0\r\n\r\n")
        await server.close()
        assert _status(answer) == 200

    asyncio.run(main())
