"""A Starlette app served dark by uvicorn's own HTTP protocol on bridged overlay streams,
fetched by unmodified httpx (patched socket) with the caller's identity reaching the app."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.conftest import context, running_router
from umbranet.integrations.monkeypatch import monkeypatch, unpatch
from umbranet.sdk.blocking import BlockingContext

pytest.importorskip("uvicorn", reason="uvicorn is not installed")
starlette = pytest.importorskip("starlette.applications", reason="starlette is not installed")

from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from umbranet.integrations.uvicorn_host import serve_uvicorn  # noqa: E402


async def who(request: Request) -> JSONResponse:
    peer = request.scope["extensions"]["umbranet"]["peer"]
    return JSONResponse({"spiffe_id": peer["spiffe_id"], "client": request.client.host})


def test_uvicorn_serves_dark_with_the_peer_identity(network, arun, tmp_path: Path) -> None:
    app = starlette.Starlette(routes=[Route("/who", who)])
    path = tmp_path / "alice.json"
    network.identity("alice", attributes=("client",)).save(path)

    def client_side() -> list[dict[str, str]]:
        with BlockingContext(path, control=network.control, renew=False) as ctx:
            monkeypatch(ctx)
            try:
                with httpx.Client(timeout=10) as client:  # two requests: keep-alive reuse
                    return [client.get("http://echo.umbra/who").json() for _ in range(2)]
            finally:
                unpatch()

    async def main() -> list[dict[str, str]]:
        async with running_router(network), context(network, "host", "server") as host:
            listener = await host.listen("echo").start()
            serving = asyncio.get_running_loop().create_task(serve_uvicorn(app, listener))
            try:
                return await asyncio.to_thread(client_side)
            finally:
                serving.cancel()
                await listener.close()

    alice = "spiffe://test.umbra/workload/alice"
    assert arun(main()) == [{"spiffe_id": alice, "client": alice}] * 2
