"""The TLS scope wrapper that carries the client certificate from uvicorn to the routes."""

from __future__ import annotations

import asyncio
from typing import Any

from umbranet.controller.api.deps import peer_certificate_der
from umbranet.controller.server import TlsScopeApp


def test_tls_scope_app_adds_the_certificate_without_touching_the_original_scope() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    original: dict[str, Any] = {"type": "http", "extensions": {"other": {}}}

    async def noop() -> Any:
        return {}

    async def send(message: Any) -> None:
        return None

    asyncio.run(TlsScopeApp(app, b"DER")(original, noop, send))
    asyncio.run(TlsScopeApp(app, None)({"type": "http"}, noop, send))
    asyncio.run(TlsScopeApp(app, b"DER")({"type": "lifespan"}, noop, send))
    assert peer_certificate_der(seen[0]) == b"DER"
    assert seen[0]["extensions"]["other"] == {}
    assert "tls" not in original["extensions"]
    assert peer_certificate_der(seen[1]) is None
    assert "extensions" not in seen[2]
