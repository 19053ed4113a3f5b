"""Host side: publish the services this identity may bind, with no port open to the network.

For each bindable service that has a host address (e.g. ``tcp://127.0.0.1:5432``) the agent
listens through the SDK (outbound links to routers only) and offloads every stream to that
address. When the address refuses, the stream is aborted with the reason, so the dialer sees
StreamReset at once instead of a hang; the refusal is counted and no other flow is touched.

For whois, the agent picks its source address *before* connecting to a loopback host
address and registers the dialer under it, so the app can ask about its peer address the
moment it accepts the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from umbranet.agent.stats import Counters
from umbranet.agent.udpflow import offload_udp
from umbranet.agent.whois import Address, Delivery, WhoisTable
from umbranet.sdk import Context, Listener, Stream, UmbraError
from umbranet.sdk.forward import parse_tcp_address, relay

__all__ = ["HostedService", "Hoster"]

log = logging.getLogger("umbranet.agent")

_MAX_BACKOFF = 30.0


@dataclass
class HostedService:
    """One hosted service: where its streams go and how binding is going."""

    service: str
    host_address: str
    task: asyncio.Task[None] | None = None
    listener: Listener | None = None
    error: str | None = None
    last_failure: str | None = None
    streams: set[asyncio.Task[Any]] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        listener = self.listener
        return {
            "service": self.service,
            "host_address": self.host_address,
            "bound_routers": listener.bound_routers if listener is not None else [],
            "streams": len(self.streams),
            "error": self.error,
            "last_failure": self.last_failure,
        }


class Hoster:
    """Keeps one SDK listener per hosted service and offloads its streams."""

    def __init__(self, context: Context, whois: WhoisTable, counters: Counters) -> None:
        self._context = context
        self._whois = whois
        self._counters = counters
        self.hosted: dict[str, HostedService] = {}

    def ensure(self, service: str, host_address: str) -> HostedService:
        """Host `service` at `host_address` (a changed address applies to new streams)."""
        entry = self.hosted.get(service)
        if entry is None:
            entry = HostedService(service, host_address)
            self.hosted[service] = entry
            entry.task = asyncio.get_running_loop().create_task(self._serve(entry))
        elif entry.host_address != host_address:
            log.info("host %s: address now %s", service, host_address)
            entry.host_address = host_address
        return entry

    async def remove(self, service: str) -> None:
        """Stop hosting: unbind, and end the streams in flight (binding was withdrawn)."""
        entry = self.hosted.pop(service, None)
        if entry is None:
            return
        tasks = ([entry.task] if entry.task is not None else []) + list(entry.streams)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        log.info("stopped hosting %s", service)

    async def close(self) -> None:
        for service in list(self.hosted):
            await self.remove(service)

    def live_streams(self) -> int:
        return sum(len(e.streams) for e in self.hosted.values())

    def snapshot(self) -> list[dict[str, Any]]:
        return [e.to_json() for _, e in sorted(self.hosted.items())]

    # -- binding ----------------------------------------------------------------------------

    async def _serve(self, entry: HostedService) -> None:
        """Bind (retrying with backoff while no router accepts us), then accept forever."""
        backoff = 1.0
        while True:
            listener = self._context.listen(entry.service)
            try:
                await listener.start()
            except UmbraError as exc:
                entry.error = f"bind: {exc}"
                self._counters.add(f"bind_failed.{exc.code}")
                log.warning("host %s: %r; retrying in %.0fs", entry.service, str(exc), backoff)
                await listener.close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            entry.listener, entry.error = listener, None
            log.info("hosting %s -> %s", entry.service, entry.host_address)
            try:
                async for stream in listener:
                    task = asyncio.get_running_loop().create_task(self._offload(entry, stream))
                    entry.streams.add(task)
                    task.add_done_callback(entry.streams.discard)
            finally:
                entry.listener = None
                await listener.close()

    # -- one stream -------------------------------------------------------------------------

    async def _offload(self, entry: HostedService, stream: Stream) -> None:
        address = entry.host_address
        if address.startswith("udp://"):
            await self._offload_udp(entry, stream)
            return
        delivery = Delivery(
            stream.peer, entry.service, "inbound", str(stream.get_extra_info("router"))
        )
        try:
            host, port = parse_tcp_address(address)
            sock, source = await self._connect(host, port, delivery)
        except (OSError, ValueError) as exc:
            reason = f"host address {address} refused: {_describe(exc)}"
            entry.last_failure = reason
            self._counters.add("host_refused")
            log.warning("host %s: %r", entry.service, reason)
            stream.abort(reason)
            return
        except asyncio.CancelledError:
            stream.abort("the agent stopped hosting this service")
            raise
        self._counters.add("host_streams")
        try:
            try:
                reader, writer = await asyncio.open_connection(sock=sock)
            except OSError as exc:
                sock.close()
                stream.abort(f"host address {address} failed: {_describe(exc)}")
                return
            outcome = await relay(stream, reader, writer)
        finally:
            self._whois.remove(source)
        if outcome.reset_by:
            entry.last_failure = f"reset by {outcome.reset_by}: {outcome.code}: {outcome.reason}"
            self._counters.add(f"host_reset_by_{outcome.reset_by}.{outcome.code}")

    async def _offload_udp(self, entry: HostedService, stream: Stream) -> None:
        """A UDP service: the stream carries length-prefixed datagrams (`udpflow`)."""
        self._counters.add("host_udp_flows")
        try:
            failure = await offload_udp(stream, entry.host_address)
        except (OSError, ValueError) as exc:
            failure = _describe(exc)
            stream.abort(f"host address {entry.host_address} refused: {failure}")
        if failure:
            entry.last_failure = f"udp: {failure}"
            self._counters.add("host_udp_failed")

    async def _connect(
        self, host: str, port: int, delivery: Delivery
    ) -> tuple[socket.socket, Address]:
        """A connected socket to the host address, its source registered for whois first."""
        loop = asyncio.get_running_loop()
        family, kind, proto, _, target = (
            await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            if _is_loopback(str(target[0])):
                sock.bind((target[0], 0))
                source = sock.getsockname()
                registered = (str(source[0]), int(source[1]))
                self._whois.add(registered, delivery)
                try:
                    await loop.sock_connect(sock, target)
                except OSError:
                    self._whois.remove(registered)
                    raise
            else:
                await loop.sock_connect(sock, target)
                source = sock.getsockname()
                registered = (str(source[0]), int(source[1]))
                self._whois.add(registered, delivery)
        except BaseException:
            sock.close()
            raise
        return sock, registered


def _is_loopback(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
