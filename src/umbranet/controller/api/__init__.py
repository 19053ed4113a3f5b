"""The controller's HTTP API: thin FastAPI routes over the use cases in `controller.service`.

Errors are ``{"error": {"code", "message"}}``; the OpenAPI document is at ``/openapi.json``.
"""

from umbranet.controller.api.app import create_app
from umbranet.controller.api.context import AppContext, Clock, system_clock

__all__ = ["AppContext", "Clock", "create_app", "system_clock"]
