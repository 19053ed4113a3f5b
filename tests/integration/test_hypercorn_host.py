"""An ASGI app served dark by hypercorn on overlay streams: HTTP/2 clients get HTTP/2, the app
sees the proven caller, the policy refuses strangers before the app runs, and one stream's
garbage does not disturb another stream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.conftest import context, running_router
from umbranet.integrations import UmbraConnectError, UmbraTransport
from umbranet.testing import LocalNetwork

pytest.importorskip("hypercorn", reason="hypercorn is not installed (umbranet[http2])")
pytest.importorskip("h2", reason="h2 is not installed (httpx[http2])")

from umbranet.integrations.hypercorn_host import HypercornHost

ALICE = "spiffe://test.umbra/workload/alice"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class App:
    """A raw ASGI app that answers with what it saw of the caller, and records every call."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.lifespan: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                self.lifespan.append(message["type"])
                await send({"type": "lifespan.startup.complete"})
            self.lifespan.append(message["type"])
            await send({"type": "lifespan.shutdown.complete"})
            return
        peer = scope["extensions"]["umbranet"]["peer"]
        self.seen.append(peer["spiffe_id"])
        body = json.dumps(
            {
                "spiffe_id": peer["spiffe_id"],
                "client": scope["client"][0],
                "http_version": scope["http_version"],
                "path": scope["path"],
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _hosted(network: LocalNetwork, app: App, test: Any) -> tuple[Any, dict[str, int]]:
    """Run `test()` while `app` is served by hypercorn as "echo"; its result and the host's
    statistics once serving stopped."""
    async with running_router(network), context(network, "host", "server") as host:
        listener = await host.listen("echo").start()
        hosting = HypercornHost(app, listener)
        serving = asyncio.get_running_loop().create_task(hosting.serve())
        try:
            result = await test()
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            await listener.close()
        return result, hosting.statistics()


def test_an_http2_client_gets_http2_and_the_app_sees_the_caller(network, arun) -> None:
    app = App()

    async def test() -> tuple[list[httpx.Response], httpx.Response, dict[str, Any]]:
        async with context(network, "alice", "client") as alice:
            transport = UmbraTransport(alice, http2=True)
            async with httpx.AsyncClient(transport=transport, timeout=10) as client:
                # Concurrent requests multiplexed on one stream: HTTP/2's point.
                answers = await asyncio.gather(
                    *(client.get(f"http://echo.umbra/n{i}") for i in range(3))
                )
                stats = transport.statistics()
            async with httpx.AsyncClient(transport=UmbraTransport(alice), timeout=10) as old:
                plain = await old.get("http://echo.umbra/plain")  # HTTP/1.1, same service
            return answers, plain, stats

    (answers, plain, client_stats), host_stats = arun(_hosted(network, app, test))
    assert [a.http_version for a in answers] == ["HTTP/2"] * 3
    assert sorted(a.json()["path"] for a in answers) == ["/n0", "/n1", "/n2"]
    for answer in answers:
        assert answer.json()["spiffe_id"] == ALICE
        assert answer.json()["client"] == ALICE
        assert answer.json()["http_version"] == "2"
    assert client_stats["dials"] == 1
    assert plain.http_version == "HTTP/1.1"
    assert plain.json()["spiffe_id"] == ALICE
    assert app.lifespan == ["lifespan.startup", "lifespan.shutdown"]
    assert host_stats["accepted"] == 2
    assert host_stats["http2"] == 1


def test_a_dialer_the_policy_refuses_never_reaches_the_app(network, arun) -> None:
    app = App()

    async def test() -> str:
        async with context(network, "mallory", "nobody") as mallory:
            transport = UmbraTransport(mallory, http2=True)
            async with httpx.AsyncClient(transport=transport, timeout=10) as client:
                with pytest.raises(UmbraConnectError) as info:
                    await client.get("http://echo.umbra/secret")
                return info.value.code

    code, host_stats = arun(_hosted(network, app, test))
    assert code == "not_authorized"
    assert app.seen == []
    assert host_stats.get("accepted", 0) == 0


def test_an_h2c_upgrade_switches_the_stream_to_http2(network, arun) -> None:
    app = App()
    # An empty SETTINGS payload, base64url: the upgrade's required HTTP2-Settings header.
    upgrade = (
        b"GET /upgraded HTTP/1.1\r\nHost: echo.umbra\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: \r\n\r\n"
    )

    async def test() -> bytes:
        async with context(network, "alice", "client") as alice:
            stream = await alice.dial("echo")
            stream.write(upgrade)
            await stream.drain()
            received = b""
            async with asyncio.timeout(10):
                while b"/upgraded" not in received and (chunk := await stream.read(65536)):
                    received += chunk
            stream.abort("done")
            return received

    answer, host_stats = arun(_hosted(network, app, test))
    head, _, frames = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert b"upgrade: h2c" in head.lower()
    # The answer to the upgraded request comes as HTTP/2 frames on stream 1: HEADERS, DATA.
    assert {0x01, 0x00} <= set(_frame_types(frames))
    assert app.seen == [ALICE]
    assert host_stats["http2"] == 1


@pytest.mark.parametrize(
    ("garbage", "last_frame"),
    [
        # The preface's magic is wrong: the connection ends after hypercorn's own SETTINGS.
        (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\ngarbage", 0x04),
        # A good preface, then DATA on stream 0: hypercorn answers GOAWAY (7) and ends it.
        (PREFACE + b"\x00\x00\x04\x00\x00\x00\x00\x00\x00data", 0x07),
    ],
    ids=["bad-magic", "data-on-stream-0"],
)
def test_a_malformed_preface_on_one_stream_does_not_disturb_another(
    network, arun, garbage: bytes, last_frame: int
) -> None:
    app = App()

    async def send_garbage(alice: Any) -> bytes:
        """What the host sends back on a stream that opens with `garbage`, up to its end."""
        stream = await alice.dial("echo")
        stream.write(garbage)
        await stream.drain()
        received = b""
        async with asyncio.timeout(10):
            while chunk := await stream.read(65536):
                received += chunk
        return received

    async def test() -> tuple[list[str], bytes, dict[str, Any]]:
        async with context(network, "alice", "client") as alice:
            transport = UmbraTransport(alice, http2=True)
            async with httpx.AsyncClient(transport=transport, timeout=10) as client:
                before = await client.get("http://echo.umbra/before")
                answer = await send_garbage(alice)
                after = await client.get("http://echo.umbra/after")
                stats = transport.statistics()
            return [r.json()["path"] for r in (before, after)], answer, stats

    (paths, answer, client_stats), host_stats = arun(_hosted(network, app, test))
    assert paths == ["/before", "/after"]
    assert client_stats["dials"] == 1  # the good connection lived through it
    assert _frame_types(answer)[-1] == last_frame  # and the bad one was ended (EOF)
    assert app.seen == [ALICE, ALICE]
    assert host_stats["accepted"] == 2
    assert host_stats.get("failed", 0) == 0


def _frame_types(data: bytes) -> list[int]:
    types = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        types.append(data[3])
        data = data[9 + length :]
    return types


# -- `umbra serve --server hypercorn` ----------------------------------------------------------


def test_umbra_serve_through_hypercorn_answers_http2(network, arun) -> None:
    from umbranet.cli.serve_cmd import _serve_through

    app = App()

    async def main() -> httpx.Response:
        async with running_router(network), context(network, "host", "server") as host:
            bound = asyncio.Event()
            serving = asyncio.get_running_loop().create_task(
                _serve_through("hypercorn", app, host, "echo", bound.set)
            )
            try:
                async with asyncio.timeout(10):
                    await bound.wait()
                async with context(network, "alice", "client") as alice:
                    transport = UmbraTransport(alice, http2=True)
                    async with httpx.AsyncClient(transport=transport, timeout=10) as client:
                        return await client.get("http://echo.umbra/cli")
            finally:
                serving.cancel()
                await asyncio.gather(serving, return_exceptions=True)

    answer = arun(main())
    assert answer.http_version == "HTTP/2"
    assert answer.json()["spiffe_id"] == ALICE


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--server", "nginx"], "use one of"), (["--wsgi", "--server", "hypercorn"], "WSGI")],
)
def test_umbra_serve_refuses_a_server_it_cannot_use(tmp_path, options, message) -> None:
    from typer.testing import CliRunner

    from umbranet.cli.main import app

    args = ["serve", "x:app", "--service", "web", "--identity", str(tmp_path / "id.json")]
    result = CliRunner().invoke(app, [*args, *options], terminal_width=200)
    assert result.exit_code == 2
    assert message in result.output
