"""A FastAPI app served dark gets the dialer as ``request.user``, authorizes by attribute with
Starlette's ``requires``, and refuses requests that did not come through the overlay."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request
from starlette.authentication import requires
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware

from tests.conftest import context, running_router
from umbranet.integrations import AsgiServer, UmbraTransport
from umbranet.integrations.auth import UmbraAuthBackend, UmbraUser, umbra_user
from umbranet.testing import LocalNetwork


def _app() -> FastAPI:
    app = FastAPI(middleware=[Middleware(AuthenticationMiddleware, backend=UmbraAuthBackend())])

    @app.get("/me")
    async def me(
        request: Request, user: Annotated[UmbraUser, Depends(umbra_user)]
    ) -> dict[str, Any]:
        return {
            "user": request.user.display_name,
            "id": request.user.identity,
            "authenticated": request.user.is_authenticated,
            "scopes": request.auth.scopes,
            "dependency": [user.name, list(user.attributes), user.service],
        }

    @app.get("/blue")
    @requires("attr:team-blue")
    async def blue(request: Request) -> dict[str, str]:
        return {"hello": request.user.display_name}

    return app


def test_the_dialer_is_the_apps_user(network: LocalNetwork, arun: Any) -> None:
    network.service("web", dial=("client",), bind=("server",))

    async def main() -> list[httpx.Response]:
        async with running_router(network):
            host = context(network, "web-host", "server")
            alice = context(network, "alice", "client", "team-blue")
            bob = context(network, "bob", "client")
            async with (
                host,
                alice,
                bob,
                AsgiServer(host, "web", _app()),
                httpx.AsyncClient(transport=UmbraTransport(alice)) as as_alice,
                httpx.AsyncClient(transport=UmbraTransport(bob)) as as_bob,
            ):
                return [
                    await as_alice.get("http://web.umbra/me"),
                    await as_alice.get("http://web.umbra/blue"),
                    await as_bob.get("http://web.umbra/blue"),
                ]

    me, alice_blue, bob_blue = arun(main())
    assert me.status_code == 200
    assert me.json() == {
        "user": "alice",
        "id": "spiffe://test.umbra/workload/alice",
        "authenticated": True,
        "scopes": ["authenticated", "attr:client", "attr:team-blue"],
        "dependency": ["alice", ["client", "team-blue"], "web"],
    }
    assert alice_blue.json() == {"hello": "alice"}
    assert bob_blue.status_code == 403  # bob is authenticated but lacks the attribute


def test_a_request_from_outside_the_overlay_has_no_user(arun: Any) -> None:
    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=_app())  # the same app on an ordinary socket
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return [await client.get("/me"), await client.get("/blue")]

    me, blue = arun(main())
    assert me.status_code == 401
    assert blue.status_code == 403
