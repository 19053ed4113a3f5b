"""The dialer's proven identity as the app's user: a Starlette authentication backend and a
FastAPI dependency, for apps served dark (`serve_asgi`, ``umbra serve``).

The overlay already authenticated the caller (certificate, ticket, policy) before the first
byte reached the app, and the ASGI scope carries who it was
(``scope["extensions"]["umbranet"]["peer"]``). These turn that into what the frameworks
expect, so an app needs no login of its own::

    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware

    app = FastAPI(middleware=[Middleware(AuthenticationMiddleware, backend=UmbraAuthBackend())])

    @app.get("/reports")
    async def reports(request: Request, peer: UmbraUser = Depends(umbra_user)):
        request.user.display_name        # "alice"; request.auth.scopes: "attr:team-blue", ...

A request that did not come through the overlay (the same app also served on a port) has no
user: the backend leaves Starlette's unauthenticated user in place and the dependency answers
401. Starlette comes with FastAPI (``umbranet[controller]``, or the app's own install); like the
requests adapter this module is imported on its own, so the SDK does not need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

__all__ = ["UmbraAuthBackend", "UmbraUser", "peer_of_scope", "umbra_user"]


@dataclass(frozen=True)
class UmbraUser(BaseUser):
    """The overlay identity behind a request (``request.user``)."""

    name: str
    spiffe_id: str
    attributes: tuple[str, ...] = ()
    service: str = ""

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.name

    @property
    def identity(self) -> str:
        return self.spiffe_id


def peer_of_scope(scope: Mapping[str, Any]) -> UmbraUser | None:
    """The overlay identity in an ASGI scope, or None when the request did not come through
    the overlay."""
    extension = (scope.get("extensions") or {}).get("umbranet") or {}
    peer = extension.get("peer")
    if not isinstance(peer, Mapping) or not peer.get("spiffe_id"):
        return None
    return UmbraUser(
        name=str(peer.get("name", "")),
        spiffe_id=str(peer["spiffe_id"]),
        attributes=tuple(str(a) for a in peer.get("attributes", ())),
        service=str(extension.get("service", "")),
    )


class UmbraAuthBackend(AuthenticationBackend):
    """Starlette authentication backend: ``request.user`` is the overlay identity and
    ``request.auth.scopes`` are ``authenticated`` plus ``attr:<attribute>`` for each of its
    attributes, so ``@requires("attr:team-blue")`` authorizes by attribute."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        user = peer_of_scope(conn.scope)
        if user is None:
            return None
        scopes = ("authenticated", *(f"attr:{a}" for a in user.attributes))
        return AuthCredentials(list(scopes)), user


def umbra_user(connection: HTTPConnection) -> UmbraUser:
    """FastAPI dependency (``Depends(umbra_user)``, HTTP or WebSocket): the overlay
    identity, or 401."""
    user = peer_of_scope(connection.scope)
    if user is None:
        raise HTTPException(401, "this endpoint is served only through the overlay")
    return user
