"""HTTP integrations over the in-process overlay: httpx and requests dial services by URL,
ASGI and WSGI apps served dark see the dialer's proven identity, bad input gets a reason."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import context, running_router
from umbranet.integrations import (
    AsgiServer,
    NamingError,
    ServiceNamer,
    UmbraConnectError,
    UmbraSyncTransport,
    UmbraTransport,
    WsgiServer,
    import_app,
)
from umbranet.integrations.requests_adapter import UmbraAdapter
from umbranet.sdk import Context
from umbranet.sdk.blocking import BlockingContext
from umbranet.testing import LocalNetwork

ALICE = "spiffe://test.umbra/workload/alice"


# -- apps under test ----------------------------------------------------------------------


def fastapi_app(events: list[str]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"greeting": "hello from lifespan"}
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        extension = request.scope["extensions"]["umbranet"]
        assert request.client is not None
        return {
            "peer": extension["peer"],
            "service": extension["service"],
            "client": request.client.host,
            "greeting": request.state.greeting,
            "query": request.url.query,
        }

    @app.post("/reverse")
    async def reverse(request: Request) -> Response:
        return Response((await request.body())[::-1], media_type="application/octet-stream")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"part {i}\n".encode()

        return StreamingResponse(parts(), media_type="text/plain")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("the app failed on purpose")

    return app


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("the app failed on purpose")
    body = environ["wsgi.input"].read()
    answer = {
        "peer": environ["umbranet.peer"],
        "service": environ["umbranet.service"],
        "remote_user": environ["REMOTE_USER"],
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "body_length": len(body),
        "custom": environ.get("HTTP_X_CUSTOM"),
    }
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(answer).encode()]


@pytest.fixture
def web(network: LocalNetwork) -> LocalNetwork:
    network.service("web", dial=("client",), bind=("server",))
    return network


# -- naming ---------------------------------------------------------------------------------


def test_hosts_map_to_services() -> None:
    namer = ServiceNamer()
    assert namer.service_for("billing.umbra") == "billing"
    assert namer.service_for("Billing.UMBRA.") == "billing"
    assert namer.service_for("billing") == "billing"
    assert ServiceNamer(suffix=".corp").service_for("db.corp") == "db"
    mapped = ServiceNamer(mapping={"api.example.com": "billing"})
    assert mapped.service_for("API.example.com") == "billing"
    with pytest.raises(NamingError) as info:
        namer.service_for("not a name")
    assert info.value.code == "bad_service_name"


_FIRST = "abcdefghijklmnopqrstuvwxyz0123456789"
NAMES = st.builds(
    str.__add__, st.sampled_from(_FIRST), st.text(alphabet=_FIRST + "_-", max_size=40)
)


@given(NAMES)
def test_suffix_is_stripped_for_every_valid_name(name: str) -> None:
    assert ServiceNamer().service_for(f"{name}.umbra") == name
    assert ServiceNamer().service_for(name.upper()) == name


@given(st.text(max_size=80))
def test_any_host_names_a_valid_service_or_raises_naming_error(host: str) -> None:
    try:
        service = ServiceNamer().service_for(host)
    except NamingError:
        return
    assert ServiceNamer().service_for(service) == service


def test_import_app_names_what_is_missing() -> None:
    assert import_app("tests.integration.test_integrations:wsgi_app") is wsgi_app
    for spec in ("no_such_module_x:app", "json:no_such_attribute", "json"):
        with pytest.raises(Exception) as info:
            import_app(spec)
        assert getattr(info.value, "code", None) == "app_not_found"


# -- ASGI with httpx ------------------------------------------------------------------------


def test_asgi_app_served_dark_sees_the_dialer_and_keeps_alive(web: LocalNetwork, arun) -> None:
    events: list[str] = []

    async def main() -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
        async with running_router(web):
            host = context(web, "web-host", "server")
            alice = context(web, "alice", "client", "team-blue")
            async with host, alice:
                server = AsgiServer(host, "web", fastapi_app(events))
                async with server:
                    transport = UmbraTransport(alice)
                    async with httpx.AsyncClient(transport=transport) as client:
                        first = await client.get("http://web.umbra/whoami?x=1")
                        second = await client.post(
                            "http://web.umbra/reverse", content=b"abc" * 50_000
                        )
                        async with client.stream("GET", "http://web.umbra/stream") as streamed:
                            parts = [p async for p in streamed.aiter_bytes()]
                        kept_alive = transport.statistics()["dials"]
                        bare = await client.get("http://web/whoami")  # another origin
                    results = [first.json(), second.content, b"".join(parts), events.copy()]
                    assert bare.json()["peer"]["spiffe_id"] == ALICE
                    assert kept_alive == 1
                    return results, transport.statistics(), server.statistics()

    (whoami, reversed_body, streamed, seen_events), client_stats, server_stats = arun(main())
    assert whoami["peer"] == {
        "name": "alice",
        "spiffe_id": ALICE,
        "attributes": ["client", "team-blue"],
    }
    assert whoami["service"] == "web"
    assert whoami["client"] == ALICE
    assert whoami["greeting"] == "hello from lifespan"
    assert whoami["query"] == "x=1"
    assert reversed_body == (b"abc" * 50_000)[::-1]
    assert streamed == b"".join(f"part {i}\n".encode() for i in range(5))
    assert seen_events == ["startup"]
    assert events == ["startup", "shutdown"]
    # three requests to web.umbra, one overlay stream: keep-alive reused the dial;
    # http://web/ is another origin, so another pooled stream
    assert client_stats["dials"] == 2
    assert server_stats["counters"]["connections"] == 2
    assert server_stats["counters"]["requests"] == 4


def test_malformed_requests_get_400_with_reason_and_others_are_served(
    web: LocalNetwork, arun
) -> None:
    bad_inputs = [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: web\r\nno colon here\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: nope\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: web\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
        # a malformed body, found only once the app reads it
        b"POST /reverse HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
    ]

    async def main() -> tuple[list[bytes], int, dict[str, Any]]:
        async with running_router(web):
            host = context(web, "web-host", "server")
            alice = context(web, "alice", "client")
            async with host, alice, AsgiServer(host, "web", fastapi_app([])) as server:
                answers = []
                for payload in bad_inputs:
                    stream = await alice.dial("web")
                    stream.write(payload)
                    answers.append(await stream.read())
                async with httpx.AsyncClient(transport=UmbraTransport(alice)) as client:
                    status = (await client.get("http://web.umbra/whoami")).status_code
                return answers, status, server.statistics()

    answers, status, stats = arun(main())
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] in (b"400", b"431"), answer[:200]
        error = json.loads(body)["error"]
        assert error["code"] in ("bad_request", "header_too_large")
        assert error["message"].startswith(("malformed HTTP request", "request head over"))
    assert status == 200
    assert stats["counters"]["bad_requests"] == len(bad_inputs)


def test_app_exception_is_500_and_closes_the_connection(web: LocalNetwork, arun) -> None:
    async def main() -> tuple[int, int, dict[str, Any], dict[str, Any]]:
        async with running_router(web):
            host = context(web, "web-host", "server")
            alice = context(web, "alice", "client")
            async with host, alice, AsgiServer(host, "web", fastapi_app([])) as server:
                transport = UmbraTransport(alice)
                async with httpx.AsyncClient(transport=transport) as client:
                    failed = (await client.get("http://web.umbra/boom")).status_code
                    after = (await client.get("http://web.umbra/whoami")).status_code
                return failed, after, transport.statistics(), server.statistics()

    failed, after, client_stats, server_stats = arun(main())
    assert (failed, after) == (500, 200)
    assert server_stats["counters"]["app_errors"] == 1
    assert client_stats["dials"] == 2  # the failed request's connection was closed


def test_refused_dial_surfaces_the_overlay_code(web: LocalNetwork, arun) -> None:
    async def main() -> list[str]:
        async with running_router(web):
            mallory = context(web, "mallory", "nobody")
            async with mallory, httpx.AsyncClient(transport=UmbraTransport(mallory)) as client:
                codes = []
                for url in ("http://web.umbra/", "http://nothing.umbra/"):
                    with pytest.raises(UmbraConnectError) as info:
                        await client.get(url)
                    codes.append(info.value.code)
                with pytest.raises(httpx.UnsupportedProtocol):
                    await client.get("https://web.umbra/")
                return codes

    assert arun(main()) == ["not_authorized", "unknown_service"]


# -- WSGI with requests, and the sync httpx transport ---------------------------------------


@asynccontextmanager
async def blocking_client(
    network: LocalNetwork, tmp_path: Path, name: str, *attributes: str
) -> AsyncIterator[Path]:
    """The identity file a BlockingContext in another thread will load."""
    path = tmp_path / f"{name}.json"
    network.identity(name, attributes=attributes).save(path)
    yield path


def _blocking(path: Path, network: LocalNetwork) -> BlockingContext:
    return BlockingContext(path, control=network.control, renew=False)


def test_wsgi_app_served_dark_to_requests(web: LocalNetwork, arun, tmp_path: Path) -> None:
    def client_side(path: Path) -> tuple[list[Any], int, str]:
        with _blocking(path, web) as ctx, requests.Session() as session:
            adapter = UmbraAdapter(ctx)
            session.mount("http://", adapter)
            answers = [
                session.get("http://web.umbra/hello%20there?q=1", headers={"X-Custom": "1"}).json(),
                session.post("http://web.umbra/upload", data=b"x" * 200_000).json(),
                session.put("http://web/upload", data=iter([b"chunk"] * 10)).json(),
            ]
            boom = session.get("http://web.umbra/boom")
            with pytest.raises(requests.ConnectionError) as info:
                session.get("http://nothing.umbra/")
            return answers, boom.status_code, str(info.value)

    async def main() -> tuple[tuple[list[Any], int, str], dict[str, Any]]:
        async with running_router(web), blocking_client(web, tmp_path, "alice", "client") as path:
            host = context(web, "web-host", "server")
            async with host, WsgiServer(host, "web", wsgi_app) as server:
                result = await asyncio.to_thread(client_side, path)
                return result, server.statistics()

    (answers, boom_status, refused), stats = arun(main())
    hello, upload, chunked = answers
    assert hello["peer"]["spiffe_id"] == ALICE
    assert hello["peer"]["name"] == "alice"
    assert hello["remote_user"] == ALICE
    assert hello["service"] == "web"
    assert hello["path"] == "/hello there"
    assert hello["query"] == "q=1"
    assert hello["custom"] == "1"
    assert (upload["method"], upload["body_length"]) == ("POST", 200_000)
    assert (chunked["method"], chunked["body_length"]) == ("PUT", 50)
    assert boom_status == 500
    assert "unknown_service" in refused
    assert stats["counters"]["app_errors"] == 1
    # three good requests reused one stream; the 500 closed its connection
    assert stats["counters"]["connections"] == 1 + 1


def test_sync_httpx_transport_over_blocking_context(
    web: LocalNetwork, arun, tmp_path: Path
) -> None:
    def client_side(path: Path) -> tuple[dict[str, Any], int]:
        with _blocking(path, web) as ctx:
            transport = UmbraSyncTransport(ctx)
            with httpx.Client(transport=transport) as client:
                client.get("http://web.umbra/whoami")
                answer = client.get("http://web.umbra/whoami").json()
            return answer, transport.backend.dials

    async def main() -> tuple[dict[str, Any], int]:
        async with running_router(web), blocking_client(web, tmp_path, "alice", "client") as path:
            host = context(web, "web-host", "server")
            async with host, AsgiServer(host, "web", fastapi_app([])):
                return await asyncio.to_thread(client_side, path)

    answer, dials = arun(main())
    assert answer["peer"]["spiffe_id"] == ALICE
    assert dials == 1


def test_lifespan_startup_failure_is_fatal(web: LocalNetwork, arun) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})

    async def main() -> str:
        async with running_router(web), context(web, "web-host", "server") as host:
            with pytest.raises(Exception) as info:
                await AsgiServer(host, "web", app).start()
            return str(info.value)

    assert "database unreachable" in arun(main())


# -- `umbra serve` as a real process ---------------------------------------------------------


def test_umbra_serve_hosts_an_app_with_no_listening_socket(tmp_path: Path) -> None:
    from tests.conftest import free_port
    from tests.integration.test_overlay_processes import _listening_sockets
    from umbranet.quickstart import Quickstart

    (tmp_path / "darkapp.py").write_text(
        textwrap.dedent(
            """
            def app(environ, start_response):
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [("hi " + environ["umbranet.peer"]["name"]).encode()]
            """
        )
    )
    net = Quickstart(
        tmp_path / "net",
        router_port=free_port(),
        controller_port=free_port(),
        say=lambda _m: None,
    )
    serving: subprocess.Popen[str] | None = None
    try:
        net.start_core()
        asyncio.run(net.ensure_service("darkapp", ["app-clients"], ["app-hosts"]))
        host_file = asyncio.run(net.enroll("app-host", ["app-hosts"]))
        client_file = asyncio.run(net.enroll("app-client", ["app-clients"]))
        serving = subprocess.Popen(
            [
                *(sys.executable, "-m", "umbranet.cli.main", "serve", "darkapp:app"),
                *("--service", "darkapp", "--identity", str(host_file), "--wsgi"),
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert serving.stdout is not None
        line = serving.stdout.readline()
        assert line.startswith("serving darkapp:app"), line or serving.stderr.read()

        async def fetch() -> str:
            ctx = Context.from_file(client_file)
            async with ctx, httpx.AsyncClient(transport=UmbraTransport(ctx)) as client:
                return (await client.get("http://darkapp.umbra/")).text

        assert asyncio.run(fetch()) == "hi app-client"
        assert _listening_sockets(serving.pid) == []
    finally:
        if serving is not None:
            serving.terminate()
            serving.communicate(timeout=10)  # also closes the pipes
        net.stop()
