"""Intercept with root (Linux): DNS names to proxy addresses, and a kernel redirect to the agent.

`RootMode` is the part of the agent that `umbra up --root` adds. It runs the DNS stub
(`dns_stub`), keeps a transparent TCP listener on 127.0.0.1, and installs the system changes
(`redirect`) that steer connections for the proxy range to that listener, plus one UDP
socket per (service, intercept port) for UDP flows (`udpflow`). Each accepted
connection's original destination (``SO_ORIGINAL_DST``) names the proxy address, the
allocation table (`proxyaddr`) names the service, and the flow is dialed and relayed like a
loopback intercept's. A connection to a proxy address no dialable service holds is reset
(RST) and counted; it touches no other flow.

Names a service answers to: ``<service>.<suffix>`` (``web.umbra``), the host names of its
intercepts (``db.corp.internal:5432`` from the controller), and ``--dns-name NAME=SERVICE``.
On a host whose resolv.conf is systemd-resolved's stub, those names reach the stub through a
DNS scope resolved routes them to (`resolved`); its routing domains follow the names.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from umbranet.agent import redirect, resolved
from umbranet.agent.config import ConfigError, RootSettings
from umbranet.agent.dns_stub import DnsStub
from umbranet.agent.outbound import carry_outbound
from umbranet.agent.proxyaddr import ProxyAddresses, parse_range
from umbranet.agent.stats import Counters
from umbranet.agent.udpflow import UdpPort
from umbranet.agent.whois import WhoisTable
from umbranet.sdk import Context
from umbranet.sdk.forward import reset_tcp

__all__ = ["RootMode", "RootSettings", "parse_dns_name"]

log = logging.getLogger("umbranet.agent")

# From <linux/netfilter_ipv4.h>: the destination a connection had before nat redirected it.
_SO_ORIGINAL_DST = 80


def parse_dns_name(text: str) -> tuple[str, str]:
    """``NAME=SERVICE`` -> (name, service); ConfigError ``bad_dns_name`` otherwise."""
    name, sep, service = text.partition("=")
    name, service = name.strip().rstrip(".").lower(), service.strip()
    if not sep or not name or not service or " " in name:
        raise ConfigError("bad_dns_name", f"expected NAME=SERVICE, got {text!r}")
    return name, service


class RootMode:
    """``await start()`` installs; ``update(...)`` follows the controller; ``close()`` undoes."""

    def __init__(
        self,
        settings: RootSettings,
        state_dir: Path,
        context: Context,
        whois: WhoisTable,
        counters: Counters,
    ) -> None:
        try:
            self.network = parse_range(settings.proxy_range)
        except ValueError as exc:
            raise ConfigError("bad_proxy_range", str(exc)) from None
        self.settings = settings
        self._state_dir = state_dir
        self._context = context
        self._whois = whois
        self._counters = counters
        self.proxies = ProxyAddresses(self.network, state_dir / "proxies.json")
        self.stub: DnsStub | None = None
        self._server: asyncio.Server | None = None
        self._dialable: set[str] = set()
        self._connections: set[asyncio.Task[Any]] = set()
        self._udp: dict[tuple[str, int], UdpPort] = {}
        self._udp_entries: dict[tuple[str, int], int] = {}
        self.installed: redirect.Installed | None = None
        self._domains: list[str] = []

    async def start(self) -> None:
        """Start the stub and listener, then change the system (undone if anything fails)."""
        redirect.require_root()
        settings = self.settings
        # Leftovers of a crashed run first: their resolv.conf would name our stub upstream.
        await asyncio.to_thread(redirect.uninstall, self._state_dir)
        upstreams = _upstreams(settings)
        self.stub = DnsStub(
            self._counters,
            upstreams,
            host=settings.dns_address,
            port=settings.dns_port,
            suffix=settings.suffix,
        )
        try:
            await self.stub.start()
            self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
            port = int(self._server.sockets[0].getsockname()[1])
            self.installed = await asyncio.to_thread(
                functools.partial(
                    redirect.install,
                    self._state_dir,
                    str(self.network),
                    port,
                    settings.dns_address,
                    settings.resolv_conf,
                    stub_port=self.stub.port,
                    suffix=settings.suffix,
                )
            )
            if self.installed.dns_link:
                self._domains = resolved.routing_domains(settings.suffix, ())
        except OSError as exc:
            await self.close()
            raise ConfigError("root_mode_failed", f"cannot start root mode: {exc}") from None
        except BaseException:
            await self.close()
            raise
        log.info(
            "root mode: %s -> 127.0.0.1:%d, DNS stub %s:%d (upstream %s) via %s",
            self.network,
            port,
            settings.dns_address,
            self.stub.port,
            ", ".join(h for h, _ in upstreams) or "none",
            f"systemd-resolved link {self.installed.dns_link}"
            if self.installed and self.installed.dns_link
            else settings.resolv_conf,
        )

    async def update(
        self, dial: Mapping[str, Sequence[str]], ports: Mapping[str, Sequence[int]] | None = None
    ) -> None:
        """Follow the controller: `dial` maps each dialable service to its intercept names,
        `ports` to its intercept ports (which also get UDP redirects)."""
        self._dialable = set(dial)
        names: dict[str, str] = {}
        for service in sorted(dial):
            address = str(self.proxies.ensure(service))
            names[f"{service}.{self.settings.suffix}"] = address
            for host in dial[service]:
                names[host] = address
        for name, service in self.settings.dns_names.items():
            if service in dial:
                names[name] = str(self.proxies.ensure(service))
        if self.stub is not None:
            self.stub.set_names(names)
        if self.installed is not None and self.installed.dns_link:
            domains = resolved.routing_domains(self.settings.suffix, names)
            if domains != self._domains:
                link = self.installed.dns_link
                await asyncio.to_thread(redirect.set_resolved_domains, link, domains)
                self._domains = domains
        if self.installed is not None:
            await self._update_udp({s: (ports or {}).get(s, []) for s in dial})

    async def _update_udp(self, wanted: Mapping[str, Sequence[int]]) -> None:
        keys = {(service, port) for service, listed in wanted.items() for port in listed}
        for key in set(self._udp) - keys:
            await self._udp.pop(key).close()
        for service, port in sorted(keys - set(self._udp)):
            dial = functools.partial(self._context.dial, port=port)
            udp = UdpPort(service, port, dial, self._counters)
            await udp.start()
            self._udp[service, port] = udp
        entries = {
            (str(self.proxies.ensure(s)), p): udp.local_port for (s, p), udp in self._udp.items()
        }
        if entries != self._udp_entries:
            await asyncio.to_thread(redirect.set_udp_redirects, entries)
            self._udp_entries = entries

    async def close(self) -> None:
        """Undo the system changes first (so apps stop being steered here), then stop."""
        if self.installed is not None:
            removed = await asyncio.to_thread(redirect.uninstall, self._state_dir)
            log.info("root mode removed: %s", "; ".join(removed) or "nothing")
            self.installed = None
            self._domains = []
        if self._server is not None:
            self._server.close()
        for udp in self._udp.values():
            await udp.close()
        self._udp.clear()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.stub is not None:
            await self.stub.close()

    def snapshot(self) -> dict[str, Any]:
        listen = None
        if self._server is not None and self._server.sockets:
            listen = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return {
            "proxy_range": str(self.network),
            "resolved_link": self.installed.dns_link if self.installed else None,
            "transparent_listen": listen,
            "dns": self.stub.snapshot() if self.stub is not None else None,
            "proxies": {s: a for s, a in self.proxies.snapshot().items() if s in self._dialable},
            "connections": len(self._connections),
            "udp": [u.snapshot() | {"listen": u.local_port} for _, u in sorted(self._udp.items())],
        }

    # -- one redirected connection ------------------------------------------------------------

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._carry(reader, writer)
        finally:
            self._connections.discard(task)

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        original = _original_destination(writer)
        service = self.proxies.service_for(original[0]) if original else None
        if service is None or service not in self._dialable:
            self._counters.add("root_no_service")
            reset_tcp(writer)
            return
        await carry_outbound(
            self._context,
            service,
            reader,
            writer,
            port=original[1] if original else None,  # the service port policy rules may name
            whois=self._whois,
            counters=self._counters,
            counter="root_streams",
        )


def _upstreams(settings: RootSettings) -> list[tuple[str, int]]:
    """Where the stub forwards names that are not ours: the nameservers resolv.conf lists, or
    with systemd-resolved the servers resolved itself uses (never resolved's own stub)."""
    path = settings.resolv_conf
    with_resolved = resolved.manages(path)
    if with_resolved:
        path = resolved.upstreams_file(path)
    try:
        text = path.read_text()
    except OSError as exc:
        if with_resolved:
            log.warning("root mode: no upstream list from systemd-resolved (%s)", exc)
            return []
        raise ConfigError("no_resolv_conf", f"{path}: {exc}") from None
    found = redirect.read_upstreams(text, settings.dns_address)
    return [(host, port) for host, port in found if host not in resolved.RESOLVED_STUBS]


def _original_destination(writer: asyncio.StreamWriter) -> tuple[str, int] | None:
    """Where the app connected before the redirect (None if it was not redirected)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), port
