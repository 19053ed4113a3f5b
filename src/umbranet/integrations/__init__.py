"""Plug the overlay into the HTTP ecosystem: clients dial services by URL, apps serve dark.

- `UmbraTransport` / `UmbraSyncTransport`: httpx transports, `http://billing.umbra/` -> the
  service "billing" (see `ServiceNamer`).
- `umbranet.integrations.requests_adapter.UmbraAdapter`: the same for requests (imported on
  its own, since requests is an optional dependency).
- `serve_asgi` / `AsgiServer`, `serve_wsgi` / `WsgiServer`: host an ASGI or WSGI app as a
  service with no listening socket; the app sees the dialer's proven identity (ASGI apps
  also serve WebSockets).
- `umbranet.integrations.auth`: that identity as Starlette's ``request.user`` and a FastAPI
  dependency (imported on its own: it needs Starlette).
"""

from umbranet.integrations.asgi import AsgiServer, LifespanError, serve_asgi
from umbranet.integrations.httpx_transport import (
    UmbraConnectError,
    UmbraSyncTransport,
    UmbraTransport,
)
from umbranet.integrations.naming import NamingError, ServiceNamer
from umbranet.integrations.serving import OverlayHttpServer, import_app, peer_info
from umbranet.integrations.wsgi import WsgiServer, serve_wsgi

__all__ = [
    "AsgiServer",
    "LifespanError",
    "NamingError",
    "OverlayHttpServer",
    "ServiceNamer",
    "UmbraConnectError",
    "UmbraSyncTransport",
    "UmbraTransport",
    "WsgiServer",
    "import_app",
    "peer_info",
    "serve_asgi",
    "serve_wsgi",
]
