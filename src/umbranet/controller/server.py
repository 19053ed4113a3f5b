"""Serve the controller API over HTTPS with optional client certificates (uvicorn, h11).

TLS asks every client for a certificate but lets it connect without one (``CERT_OPTIONAL``),
because enrollment and the bundle are public; a certificate that *is* presented must chain to
the network CA or the handshake fails. Routes that need an identity read the certificate
from ``scope["extensions"]["tls"]["client_cert_der"]``, which uvicorn does not provide: the
`MtlsH11Protocol` below adds it per connection, right after the TLS handshake.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from umbranet.controller.api import create_app
from umbranet.controller.ephemeral_sweeper import EphemeralSweeper
from umbranet.controller.home import LoadedController, load_home, write_server_certificate
from umbranet.controller.posture_ticker import DEFAULT_INTERVAL, PostureTicker

__all__ = [
    "LOG_CONFIG",
    "MtlsH11Protocol",
    "TlsScopeApp",
    "build_server",
    "run",
    "serve",
]


LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stderr",
        },
    },
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        "uvicorn.error": {"level": "WARNING"},
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        "umbranet": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
}
"""Quiet uvicorn (warnings only, no access log); the controller's own decisions at INFO."""


class TlsScopeApp:
    """ASGI wrapper adding the connection's client certificate to every request scope."""

    def __init__(self, app: ASGIApp, client_cert_der: bytes | None) -> None:
        self.app = app
        self.client_cert_der = client_cert_der

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in {"http", "websocket"}:
            scope = dict(scope)
            extensions = dict(scope.get("extensions") or {})
            extensions["tls"] = {"client_cert_der": self.client_cert_der}
            scope["extensions"] = extensions
        await self.app(scope, receive, send)


class MtlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus the peer certificate in the scope (see `TlsScopeApp`)."""

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der: bytes | None = None
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True) or None
        self.app = TlsScopeApp(self.app, der)


def build_server(
    loaded: LoadedController,
    *,
    clock: Callable[[], datetime] | None = None,
    host: str | None = None,
    port: int | None = None,
) -> uvicorn.Server:
    """A uvicorn server for the loaded controller (not started)."""
    kwargs: dict[str, Any] = {}
    if clock is not None:
        kwargs["clock"] = clock
    app = create_app(loaded.db, loaded.authority, **kwargs)
    config = uvicorn.Config(
        app,
        host=host if host is not None else loaded.config.host,
        port=port if port is not None else loaded.config.port,
        http=MtlsH11Protocol,
        ssl_keyfile=str(loaded.home.server_key),
        ssl_certfile=str(loaded.home.server_pem),
        ssl_ca_certs=str(loaded.home.ca_pem),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
        log_config=LOG_CONFIG,
        access_log=False,
        server_header=False,
        lifespan="off",
        ws="none",
        timeout_keep_alive=30,
    )
    return uvicorn.Server(config)


def serve(loaded: LoadedController, *, posture_interval: float = DEFAULT_INTERVAL) -> None:
    """Refresh the server certificate and serve until SIGINT/SIGTERM; closes the database.

    Postures are re-evaluated every ``posture_interval`` seconds while it serves.
    """
    ticker: PostureTicker | None = None
    sweeper: EphemeralSweeper | None = None
    try:
        write_server_certificate(loaded.home, loaded.authority, loaded.config, datetime.now(UTC))
        server = build_server(loaded)
        app = server.config.app
        assert isinstance(app, FastAPI)  # build_server always serves the API app
        ticker = PostureTicker(app.state.umbra, posture_interval)
        ticker.start()
        sweeper = EphemeralSweeper(app.state.umbra)
        sweeper.start()
        server.run()
    finally:
        if sweeper is not None:
            sweeper.stop()
        if ticker is not None:
            ticker.stop()
        loaded.db.dispose()


def run(home: str | Path) -> None:
    """Load the home directory and `serve` it."""
    serve(load_home(home))
