"""Serve the controller API over HTTPS with optional client certificates (uvicorn, h11).

TLS asks every client for a certificate but lets it connect without one (``CERT_OPTIONAL``),
because enrollment and the bundle are public; a certificate that *is* presented must chain to
the network CA or the handshake fails. Routes that need an identity read the certificate
from ``scope["extensions"]["tls"]["client_cert_der"]``, which uvicorn does not provide: the
`MtlsH11Protocol` below adds it per connection, right after the TLS handshake.

Slow clients cannot pin connections (slowloris): each request must arrive whole, headers and
body, within `READ_TIMEOUT` of the connection being made (or of the previous response), and
at most `MAX_ANONYMOUS` connections without a client certificate are open at once
(enrollment and the bundle are all they can ask for); past that, new anonymous connections
are closed at once, so certificate holders keep being served. Both refusals are counted
(``umbra_api_errors_total{code="read_timeout"}``, ``{code="too_many_anonymous"}``). `serve`
raises the open-file limit to the hard limit, and asyncio pauses accepting for a second when
descriptors do run out, so the server degrades instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import resource
import socket
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
from umbranet.controller.api.context import AppContext
from umbranet.controller.ephemeral_sweeper import EphemeralSweeper
from umbranet.controller.events import EventHub
from umbranet.controller.home import LoadedController, load_home, write_server_certificate
from umbranet.controller.logfmt import safe
from umbranet.controller.metrics import Metrics
from umbranet.controller.posture_ticker import DEFAULT_INTERVAL, PostureTicker
from umbranet.controller.replicas import ReplicaDirectory
from umbranet.controller.service.addresses import OverlaySettings
from umbranet.controller.warmup import warm_in_background
from umbranet.home_layout import HomeError
from umbranet.obs import LogFormat

log = logging.getLogger("umbranet.controller.server")

__all__ = [
    "LOG_CONFIG",
    "MAX_ANONYMOUS",
    "READ_TIMEOUT",
    "SHUTDOWN_GRACE",
    "MtlsH11Protocol",
    "UmbraServer",
    "TlsScopeApp",
    "build_server",
    "log_config",
    "run",
    "serve",
]


LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "umbranet.obs.TextFormatter"},
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


def log_config(log_format: LogFormat = "text") -> dict[str, Any]:
    """`LOG_CONFIG` writing text (control characters escaped) or one JSON object per line."""
    config = copy.deepcopy(LOG_CONFIG)
    factory = "umbranet.obs.JsonFormatter" if log_format == "json" else "umbranet.obs.TextFormatter"
    config["formatters"]["plain"] = {"()": factory}
    return config


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


READ_TIMEOUT = 10.0
"""Seconds a client has to send one whole request (headers and body)."""
MAX_ANONYMOUS = 256
"""Connections without a client certificate open at once."""
SHUTDOWN_GRACE = 3
"""Seconds a stopping controller lets running requests finish before cancelling them."""


class MtlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus the peer certificate in the scope (see `TlsScopeApp`),
    a whole-request read deadline and a cap on anonymous connections (see the module doc).

    `build_server` makes a subclass with the limits and the counters to use.
    """

    read_timeout: float = READ_TIMEOUT
    max_anonymous: int = MAX_ANONYMOUS
    metrics: Metrics | None = None
    anonymous = False

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der: bytes | None = None
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True) or None
        self.app = TlsScopeApp(self.app, der)
        self._read_timer: asyncio.TimerHandle | None = None
        self._armed_cycle: object = None
        self._bytes_since_arm = 0
        self._served = 0
        self.anonymous = der is None
        if self.anonymous:
            others = sum(1 for c in self.connections if getattr(c, "anonymous", False))
            if others > self.max_anonymous:  # `others` includes this one
                self._refuse("too_many_anonymous")
                return
        self._arm()

    def data_received(self, data: bytes) -> None:
        self._bytes_since_arm += len(data)
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._served += 1
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def shutdown(self) -> None:
        """The server is stopping: an idle connection is dropped at once. A TLS close waits
        for the client's close_notify, which an idle pooled client may never send, and the
        server waits for every connection to be gone."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
            return
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._armed_cycle = self.cycle
        self._bytes_since_arm = 0
        self._read_timer = self.loop.call_later(self.read_timeout, self._read_deadline)

    def _read_deadline(self) -> None:
        self._read_timer = None
        cycle = self.cycle
        if cycle is not None and cycle is not self._armed_cycle:
            if not cycle.more_body or cycle.response_started:
                return  # the request arrived whole (or was answered already)
        elif self._bytes_since_arm == 0 and self._served > 0:
            return  # idle between requests: uvicorn's keep-alive timeout ends that
        self._refuse("read_timeout")

    def _refuse(self, code: str) -> None:
        if self.metrics is not None:
            self.metrics.api_errors.labels(code=code).inc()
        log.info("connection closed code=%s client=%s", code, safe(self.client))
        self.transport.close()


class UmbraServer(uvicorn.Server):
    """uvicorn's server, ending the event streams first when it stops: they would otherwise
    hold the shutdown until `SHUTDOWN_GRACE` and then be cancelled."""

    events: EventHub | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.events is not None:
            self.events.close()
            await asyncio.sleep(0.2)  # the streams' last bytes go out; connections go idle
        await super().shutdown(sockets)


def build_server(
    loaded: LoadedController,
    *,
    clock: Callable[[], datetime] | None = None,
    host: str | None = None,
    port: int | None = None,
    log_format: LogFormat = "text",
    read_timeout: float = READ_TIMEOUT,
    max_anonymous: int = MAX_ANONYMOUS,
) -> uvicorn.Server:
    """A uvicorn server for the loaded controller (not started)."""
    kwargs: dict[str, Any] = {}
    if clock is not None:
        kwargs["clock"] = clock
    app = create_app(loaded.db, loaded.authority, **kwargs)
    try:  # optional overlay ranges (network mode) in config.json
        raw = json.loads(loaded.home.config_json.read_text())
        app.state.umbra.overlay = OverlaySettings.from_config(raw)
    except ValueError as exc:  # AddressingUsageError is one
        raise HomeError("config_invalid", f"config.json: overlay ranges: {exc}") from exc
    protocol = type(
        "UmbraH11Protocol",
        (MtlsH11Protocol,),
        {
            "read_timeout": read_timeout,
            "max_anonymous": max_anonymous,
            "metrics": app.state.umbra.metrics,
        },
    )
    config = uvicorn.Config(
        app,
        host=host if host is not None else loaded.config.host,
        port=port if port is not None else loaded.config.port,
        http=protocol,
        ssl_keyfile=str(loaded.home.server_key),
        ssl_certfile=str(loaded.home.server_pem),
        ssl_ca_certs=str(_trust_file(loaded)),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
        log_config=log_config(log_format),
        access_log=False,
        server_header=False,
        lifespan="off",
        ws="none",
        timeout_keep_alive=30,
        # Event streams never end on their own: past this, a stopping controller cancels them
        # (clients reconnect, to another replica if there is one) instead of waiting forever.
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
    )
    server = UmbraServer(config)
    server.events = app.state.umbra.events
    return server


def serve(
    loaded: LoadedController,
    *,
    posture_interval: float = DEFAULT_INTERVAL,
    log_format: LogFormat = "text",
) -> None:
    """Refresh the server certificate and serve until SIGINT/SIGTERM; closes the database.

    Postures are re-evaluated every ``posture_interval`` seconds while it serves.
    """
    ticker: PostureTicker | None = None
    context: AppContext | None = None
    _raise_file_limit()
    sweeper: EphemeralSweeper | None = None
    replicas: ReplicaDirectory | None = None
    try:
        write_server_certificate(loaded.home, loaded.authority, loaded.config, datetime.now(UTC))
        server = build_server(loaded, log_format=log_format)
        app = server.config.app
        assert isinstance(app, FastAPI)  # build_server always serves the API app
        context = app.state.umbra
        context.start_cluster()
        replicas = context.replicas = ReplicaDirectory(loaded.db, loaded.config.url, context.clock)
        replicas.start()
        ticker = PostureTicker(context, posture_interval)
        ticker.start()
        sweeper = EphemeralSweeper(app.state.umbra)
        sweeper.start()
        warm_in_background(context)
        server.run()
    finally:
        if replicas is not None:
            replicas.stop()
        if sweeper is not None:
            sweeper.stop()
        if ticker is not None:
            ticker.stop()
        if context is not None:
            context.stop_cluster()
        loaded.db.dispose()


def _trust_file(loaded: LoadedController) -> Path:
    """Every CA of the bundle, for verifying client certificates: during a CA rotation,
    certificates of both the old and the new CA must get through the handshake."""
    path = loaded.home.dir / "trust.pem"
    tmp = path.with_name("trust.pem.new")
    tmp.write_text(loaded.authority.bundle.ca_pem)
    os.replace(tmp, path)
    return path


def _raise_file_limit() -> None:
    """Use every file descriptor the hard limit allows: connections are descriptors."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run(home: str | Path) -> None:
    """Load the home directory and `serve` it."""
    serve(load_home(home))
