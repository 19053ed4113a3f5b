"""HTTP rules hold across `Upgrade:` on every way of hosting a web app dark: the ASGI server,
the WSGI server, and a stdlib `http.server` behind the relay the agent's hosting uses.

The attack (issue 9, item 5): a dialer allowed only ``GET /public`` sends it with
``Upgrade: websocket`` (or ``h2c``) and pipelines ``DELETE /admin`` behind it. A server that
does not switch answers the GET and then reads the DELETE as the next request; the gate must
judge it (403) because no ``101 Switching Protocols`` was ever sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.conftest import context, running_router
from umbranet.integrations import AsgiServer, WsgiServer
from umbranet.policy.http import HttpFragment, HttpGrant, HttpSource
from umbranet.sdk import Context
from umbranet.sdk.forward import offload
from umbranet.testing import LocalNetwork

UPGRADE = (
    b"GET /public HTTP/1.1\r\nHost: web\r\nUpgrade: %s\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
FOLLOW_UP = b"GET /public HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
DELETE = b"DELETE /admin HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n"

ALICE_GET_PUBLIC = HttpFragment(
    "web",
    (
        HttpGrant(
            "http[0]",
            '{"src": ["alice"], "methods": ["GET"], "paths": ["/public"]}',
            False,
            HttpSource(False, frozenset({"alice"})),
            frozenset({"GET"}),
            ("/public",),
        ),
    ),
)


@pytest.fixture
def web(network: LocalNetwork) -> LocalNetwork:
    """`web` with the rule "alice may only GET /public", sent with every bind grant."""
    network.service("web", dial=("client",), bind=("server",))
    plain = network.grant

    def grant(identity: Any, service: str, action: str) -> Any:
        issued = plain(identity, service, action)
        if action == "bind" and service == "web":
            return dataclasses.replace(issued, http_rules=ALICE_GET_PUBLIC.to_json())
        return issued

    network.grant = grant  # type: ignore[method-assign]
    return network


def asgi_app(seen: list[str]) -> Callable[..., Any]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append(f"{scope['method']} {scope['path']}")
        body = b"answered " + scope["path"].encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def wsgi_app(seen: list[str]) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        seen.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}")
        body = b"answered " + environ["PATH_INFO"].encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    return app


@asynccontextmanager
async def relayed_http_server(host_ctx: Context, seen: list[str]) -> AsyncIterator[None]:
    """A keep-alive stdlib http.server on loopback, hosted as `web` through `offload`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: pipelined requests are served in turn

        def _answer(self) -> None:
            seen.append(f"{self.command} {self.path}")
            body = b"answered " + self.path.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    tasks: set[asyncio.Task[None]] = set()

    async def host() -> None:
        async with host_ctx.listen("web") as listener:
            ready.set()
            async for stream in listener:
                task = asyncio.get_running_loop().create_task(offload(stream, "127.0.0.1", port))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    ready = asyncio.Event()
    hosting = asyncio.get_running_loop().create_task(host())
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield
    finally:
        hosting.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(hosting, *tasks, return_exceptions=True)
        server.shutdown()
        server.server_close()
        thread.join(5)


@asynccontextmanager
async def hosted(kind: str, host_ctx: Context, seen: list[str]) -> AsyncIterator[None]:
    if kind == "asgi":
        async with AsgiServer(host_ctx, "web", asgi_app(seen)):
            yield
    elif kind == "wsgi":
        async with WsgiServer(host_ctx, "web", wsgi_app(seen)):
            yield
    else:
        async with relayed_http_server(host_ctx, seen):
            yield


async def exchange(ctx: Context, data: bytes) -> bytes:
    """Send `data` at once on a fresh stream and read every answer until the host ends it."""
    stream = await ctx.dial("web")
    stream.write(data)
    await stream.drain()
    answers = b""
    async with asyncio.timeout(20):
        while chunk := await stream.read(65536):
            answers += chunk
    stream.close()
    return answers


KINDS = ["asgi", "wsgi", "http.server"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("protocol", [b"websocket", b"h2c"])
def test_a_request_pipelined_behind_an_upgrade_is_still_judged(
    web: LocalNetwork, arun: Any, kind: str, protocol: bytes
) -> None:
    seen: list[str] = []

    async def main() -> tuple[bytes, bytes]:
        async with (
            running_router(web),
            context(web, "web-host", "server") as host_ctx,
            context(web, "alice", "client") as alice,
            hosted(kind, host_ctx, seen),
        ):
            attack = await exchange(alice, UPGRADE % protocol + DELETE)
            after = await exchange(alice, FOLLOW_UP)
            return attack, after

    attack, after = arun(main())
    assert "DELETE /admin" not in seen  # the application never saw the refused request
    assert b"answered /admin" not in attack
    if protocol == b"h2c":
        # The gate cannot read HTTP/2, so asking to switch to it is refused outright.
        assert attack.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert b"X-Umbra-Code: http_upgrade_denied" in attack
        assert seen == ["GET /public"]  # only the follow-up request
    elif kind == "asgi":
        # The ASGI server offers the upgrade to the app as a WebSocket; this app does not
        # accept it, so the server answers 403 and switches nothing. DELETE is then judged
        # as a request and refused after that answer, in order.
        first, _, rest = attack.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 403") and b"websocket_refused" in rest
        assert b"X-Umbra-Code: http_denied" in rest
        assert seen == ["GET /public"]  # only the follow-up request
    else:
        # The server did not switch, so DELETE was judged as a request: refused after the
        # answer to the GET, in order.
        assert b"X-Umbra-Code: http_denied" in attack
        assert attack.index(b"HTTP/1.1 403") > attack.index(b"HTTP/1.1")
        assert seen == ["GET /public", "GET /public"]
    assert after.startswith(b"HTTP/1.1 200") and after.endswith(b"answered /public")


def test_an_upgrade_the_server_accepts_becomes_a_tunnel(web: LocalNetwork, arun: Any) -> None:
    """The legitimate case still works: after the server's own 101, bytes pass unexamined."""

    async def upgrading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(SWITCHED)
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main() -> bytes:
        app = await asyncio.start_server(upgrading, "127.0.0.1", 0)
        port = app.sockets[0].getsockname()[1]
        async with (
            app,
            running_router(web),
            context(web, "web-host", "server") as host_ctx,
            context(web, "alice", "client") as alice,
        ):
            listener = await host_ctx.listen("web").start()
            try:
                stream = await alice.dial("web")
                served = asyncio.get_running_loop().create_task(
                    offload(await listener.accept(), "127.0.0.1", port)
                )
                frames = b"\x81\x05hello" + DELETE  # not HTTP any more: not judged
                stream.write(UPGRADE % b"websocket" + frames)
                expected = len(SWITCHED) + len(frames)
                got = b""
                async with asyncio.timeout(20):
                    while len(got) < expected and (chunk := await stream.read(65536)):
                        got += chunk
                stream.close()
                await asyncio.wait_for(served, 20)
                return got
            finally:
                await listener.close()

    assert arun(main()) == SWITCHED + b"\x81\x05hello" + DELETE
