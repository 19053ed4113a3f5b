"""A tiny HTTP listener that serves one registry at ``GET /metrics`` (Prometheus text).

For processes with no HTTP server of their own (the router). It runs on the process's event
loop, so collectors that read a component's live state at scrape time run on the same thread
that changes it (no locks, no torn reads), which a thread-based exporter could not promise.

Plain HTTP, one request per connection, no body accepted: it is meant for loopback (the
default bind address) or a private monitoring network. Bad or slow requests are answered with
an error or dropped after a deadline and never affect the process it observes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from umbranet.obs import CONTENT_TYPE, render

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["MetricsListener", "parse_listen"]

log = logging.getLogger("umbranet.metrics")

_MAX_HEAD = 8 * 1024
_READ_TIMEOUT = 5.0


def parse_listen(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or a bare ``PORT`` (then on loopback); ValueError if bad."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    host = host.strip("[]") or default_host
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range: {number}")
    return host, number


class MetricsListener:
    """``async with MetricsListener(registry, host, port) as listener:`` serves until the end."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0):
        self.registry = registry
        self.host = host
        self.port = port
        self.scrapes = 0
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        """host:port actually bound (the port may have been 0)."""
        assert self._server is not None, "not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def __aenter__(self) -> MetricsListener:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=_MAX_HEAD
        )
        log.info("metrics on http://%s/metrics", self.address)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            writer.write(self._answer(head))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a silent, slow or oversized client gets nothing
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _response(400, "Bad Request", b"bad request\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target != b"/metrics":
            return _response(404, "Not Found", b"only /metrics is served here\n")
        if method != b"GET":
            return _response(405, "Method Not Allowed", b"use GET\n")
        self.scrapes += 1
        return _response(200, "OK", render(self.registry), CONTENT_TYPE)


def _response(status: int, phrase: str, body: bytes, ctype: str = "text/plain") -> bytes:
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
