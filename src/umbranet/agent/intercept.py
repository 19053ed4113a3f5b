"""Intercept without root: one loopback TCP listener per service this identity may dial.

`psql -h 127.0.0.1 -p 5432` or `curl http://127.0.0.1:18080/` reaches a dark service: each
accepted connection dials the service through the SDK and relays. The port a service gets
is stable, chosen in this order and recorded in the state directory:

1. ``--port SERVICE=PORT`` (only that port; failing to bind it is reported, not worked
   around, because the user asked for exactly it);
2. the port recorded for the service by an earlier run;
3. the service's intercept ports (``db.umbra:5432`` -> 5432) when free and bindable;
4. ``15000 + crc32(name) % 10000``, then the next few ports after it.

A dial that fails closes the client's connection with RST and is counted with its code.

Every connection carries the agent's identity, so by default only the agent's own user may
connect: the connecting socket's owner is looked up (`sockdiag`, else `peeruid`) before
anything is dialled, and another user's connection is reset and counted
(``local_user_refused``). ``--allow-uid`` and ``--allow-any-user`` widen that on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from umbranet.agent.config import derived_port
from umbranet.agent.outbound import carry_outbound
from umbranet.agent.peeruid import LocalUsers, read_owner_uid
from umbranet.agent.sockdiag import query_owner_uid
from umbranet.agent.stats import Counters
from umbranet.agent.whois import WhoisTable
from umbranet.sdk import Context
from umbranet.sdk.forward import reset_tcp

__all__ = ["Interceptor", "LoopbackListener", "PortBook"]

log = logging.getLogger("umbranet.agent")

# How many ports after the derived one to try when it is taken.
_DERIVED_PROBES = 16


class PortBook:
    """Which loopback port each service should get; remembers choices across restarts."""

    def __init__(self, path: Path, overrides: Mapping[str, int]) -> None:
        self._path = path
        self._overrides = dict(overrides)
        self._recorded = _load_ports(path)

    def candidates(self, service: str, intercept_ports: Sequence[int]) -> list[tuple[int, str]]:
        """Ports to try in order, each with where it came from."""
        if service in self._overrides:
            return [(self._overrides[service], "override")]
        found: list[tuple[int, str]] = []
        if service in self._recorded:
            found.append((self._recorded[service], "recorded"))
        found.extend((port, "intercept") for port in intercept_ports)
        base = derived_port(service)
        found.extend((base + i, "derived") for i in range(_DERIVED_PROBES))
        unique: dict[int, str] = {}
        for port, source in found:
            unique.setdefault(port, source)
        return list(unique.items())

    def record(self, service: str, port: int) -> None:
        if self._recorded.get(service) == port:
            return
        self._recorded[service] = port
        temporary = self._path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._recorded, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, self._path)


@dataclass
class LoopbackListener:
    """One service's listener and its live connections."""

    service: str
    intercept_ports: Sequence[int] = ()
    port: int = 0
    source: str = ""
    server: asyncio.Server | None = None
    error: str | None = None
    last_failure: str | None = None
    connections: set[asyncio.Task[Any]] = field(default_factory=set)

    def to_json(self, base: str) -> dict[str, Any]:
        return {
            "service": self.service,
            "listen": f"{base}:{self.port}" if self.server is not None else None,
            "source": self.source or None,
            "connections": len(self.connections),
            "error": self.error,
            "last_failure": self.last_failure,
        }


class Interceptor:
    """Opens, tracks and closes the loopback listeners of the services we may dial."""

    def __init__(
        self,
        context: Context,
        book: PortBook,
        whois: WhoisTable,
        counters: Counters,
        listen_base: str = "127.0.0.1",
        *,
        users: LocalUsers | None = None,
    ) -> None:
        self._context = context
        self.users = users or LocalUsers(os.getuid())
        self._book = book
        self._whois = whois
        self._counters = counters
        self.listen_base = listen_base
        self.listeners: dict[str, LoopbackListener] = {}

    async def ensure(self, service: str, intercept_ports: Sequence[int] = ()) -> LoopbackListener:
        """A listener for `service` (opened once; a failed open is retried on each call)."""
        current = self.listeners.get(service)
        if current is not None and current.server is not None:
            return current
        entry = current or LoopbackListener(service)
        entry.intercept_ports = intercept_ports
        errors: list[str] = []
        for port, source in self._book.candidates(service, intercept_ports):
            try:
                entry.server = await asyncio.start_server(
                    lambda r, w: self._accepted(entry, r, w),
                    self.listen_base,
                    port,
                    reuse_address=True,
                )
            except OSError as exc:
                errors.append(f"{port} ({source}): {exc.strerror or exc}")
                continue
            entry.port, entry.source, entry.error = port, source, None
            # Listed once bound (or failed), so status never shows one half-opened.
            self.listeners[service] = entry
            self._book.record(service, port)
            log.info("intercept %s on %s:%d (%s)", service, self.listen_base, port, source)
            return entry
        error = "no port could be bound: " + "; ".join(errors)
        if error != entry.error:  # said once per distinct failure, not on every retry
            self._counters.add("listen_failed")
            log.warning("intercept %s: %s", service, error)
        entry.error = error
        self.listeners[service] = entry
        return entry

    async def retry_unbound(self) -> None:
        """Try again to open the listeners that could not bind: the port a user asked for
        may be freed at any time, and the next refresh can be minutes away."""
        for service, entry in sorted(self.listeners.items()):
            if entry.server is None:
                await self.ensure(service, entry.intercept_ports)

    async def remove(self, service: str) -> None:
        """Stop intercepting `service` and end its connections (access was withdrawn)."""
        entry = self.listeners.pop(service, None)
        if entry is None:
            return
        if entry.server is not None:
            entry.server.close()
        for task in list(entry.connections):
            task.cancel()
        for task in list(entry.connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        log.info("stopped intercepting %s", service)

    async def close(self) -> None:
        for service in list(self.listeners):
            await self.remove(service)

    def live_connections(self) -> int:
        return sum(len(e.connections) for e in self.listeners.values())

    def snapshot(self) -> list[dict[str, Any]]:
        return [e.to_json(self.listen_base) for _, e in sorted(self.listeners.items())]

    # -- one connection ----------------------------------------------------------------

    async def _accepted(
        self, entry: LoopbackListener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        entry.connections.add(task)
        try:
            if await self._admitted(entry, writer):
                await self._carry(entry, reader, writer)
        finally:
            entry.connections.discard(task)

    async def _admitted(self, entry: LoopbackListener, writer: asyncio.StreamWriter) -> bool:
        """Whether the connecting socket's owner may act as this agent's identity."""
        users = self.users
        if users.any_user:
            return True
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        uid = None
        if peer is not None and local is not None:
            client, server = (str(peer[0]), int(peer[1])), (str(local[0]), int(local[1]))
            uid = query_owner_uid(client, server)  # one socket, asked of the kernel
            if uid is None:  # no netlink here, or the socket is gone: read the tables
                uid = await asyncio.to_thread(read_owner_uid, client, server)
        verdict = users.decide(uid)
        if verdict.allowed:
            return True
        code = "local_user_unknown" if uid is None else "local_user_refused"
        self._counters.add(code)
        log.warning(
            "intercept %s refused a local connection code=%s reason=%s",
            entry.service,
            code,
            verdict.reason,
        )
        reset_tcp(writer)
        return False

    async def _carry(
        self, entry: LoopbackListener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        failure = await carry_outbound(
            self._context,
            entry.service,
            reader,
            writer,
            port=None,
            whois=self._whois,
            counters=self._counters,
            counter="dial_streams",
        )
        if failure is not None:
            entry.last_failure = failure


def _load_ports(path: Path) -> dict[str, int]:
    """The recorded choices; a missing or damaged file just means none."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, int) and 0 < v < 65536}
