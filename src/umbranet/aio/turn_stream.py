"""The IO shell of a TURN allocation over TCP or TLS (`proto/turn.py` with ``stream=True``).

Where UDP cannot reach the TURN server, the client talks to it over one TCP connection
(``turn:HOST:PORT?transport=tcp``) or TLS (``turns:HOST:PORT``, port 5349 by default) and
still gets a UDP relay towards peers. This file only moves bytes and time: what the
machine queues is written to the stream, what the stream brings is fed back with
`handle_stream`, and its timers run on the loop's clock.

A stream out of step (the machine's `broken`), one the server closed, or a TLS failure is
a verdict: `AllocationFailed` with the reason (`stream_<why>`, `stream_closed`,
`stream_connect_failed`), counted in `counters` and logged; the connection is closed and
the caller decides whether to allocate anew. Nothing raises into the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from umbranet.clock import Clock, system_clock
from umbranet.proto.turn import AllocationFailed, Event, TurnClient

__all__ = ["TurnServer", "TurnStream", "parse_turn_url"]

log = logging.getLogger("umbranet.agent.nat")

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class TurnServer:
    """Where and how to reach a TURN server: ``transport`` is udp, tcp or tls."""

    host: str
    port: int
    transport: str

    @property
    def address(self) -> Address:
        return self.host, self.port


def parse_turn_url(url: str) -> TurnServer | None:
    """``turn:HOST[:PORT][?transport=udp|tcp]`` or ``turns:HOST[:PORT][?transport=tcp]``
    (RFC 7065); None for anything else. Hosts stay as written: the caller resolves names."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in ("turn", "turns"):
        return None
    rest, _, query = rest.partition("?")
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    transport = params.get("transport", "tcp" if scheme == "turns" else "udp").lower()
    if transport not in ("udp", "tcp") or (scheme == "turns" and transport != "tcp"):
        return None
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host, port_text = rest, ""
    if not host or (port_text and not port_text.isdigit()):
        return None
    port = int(port_text) if port_text else (5349 if scheme == "turns" else 3478)
    if not 0 < port < 65536:
        return None
    return TurnServer(host, port, "tls" if scheme == "turns" else transport)


class TurnStream(asyncio.Protocol):
    """Runs `client` (built with ``stream=True``) over one connection; `async with`."""

    def __init__(
        self,
        client: TurnClient,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        clock: Clock = system_clock,
        on_event: Callable[[Event], None] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        if not client.stream:
            raise ValueError("TurnStream needs a TurnClient built with stream=True")
        self.client = client
        self._ssl = ssl_context
        self._server_hostname = server_hostname
        self._clock = clock
        self._on_event = on_event
        self._connect_timeout = connect_timeout
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.counters: Counter[str] = Counter()

    async def __aenter__(self) -> TurnStream:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def open(self) -> None:
        """Connect (and, with an SSL context, do the TLS handshake); a failure is the
        `stream_connect_failed` verdict and an `OSError` for the caller."""
        self._loop = asyncio.get_running_loop()
        host, port = self.client.server
        try:
            await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: self,
                    host,
                    port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname if self._ssl is not None else None,
                ),
                self._connect_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self._verdict("stream_connect_failed", repr(exc))
            raise OSError(f"TURN server {host}:{port} unreachable: {exc!r}") from exc

    def close(self) -> None:
        """Release the allocation (best effort) and close the connection."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self.client.relayed is not None:
            self.client.close(self._clock.now())
            self._flush()
        transport.close()

    # -- commands --------------------------------------------------------------------------

    def allocate(self) -> None:
        self.client.allocate(self._clock.now())
        self._flush()

    def create_permission(self, peer_ip: str) -> None:
        self.client.create_permission(peer_ip, self._clock.now())
        self._flush()

    def bind_channel(self, peer: Address) -> int:
        channel = self.client.bind_channel(peer, self._clock.now())
        self._flush()
        return channel

    def send(self, peer: Address, data: bytes) -> None:
        self.client.send(peer, data)
        self._flush()

    async def next_event(self, timeout: float) -> Event:
        """The machine's next event (bounded wait: `TimeoutError` after `timeout`)."""
        return await asyncio.wait_for(self._events.get(), timeout)

    def statistics(self) -> dict[str, object]:
        return {"io": dict(self.counters), "turn": self.client.statistics()}

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: duck-typed
        self._transport = cast(asyncio.Transport, transport)
        self.counters["connected"] += 1

    def data_received(self, data: bytes) -> None:
        self.counters["bytes_in"] += len(data)
        self.client.handle_stream(data, self._clock.now())
        broken = self.client.broken
        self._flush()
        if broken is not None:
            host, port = self.client.server
            log.warning("TURN stream to %s:%d out of step (%s): closed", host, port, broken)
            self.counters[f"refused_stream_{broken}"] += 1
            if self._transport is not None:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.client.broken is None and self._transport is not None:
            # the machine has no other way to learn its allocation went with the connection
            self._verdict("stream_closed", repr(exc) if exc else "closed")
        self._transport = None
        self.closed.set()

    # -- internals -------------------------------------------------------------------------

    def _verdict(self, reason: str, detail: str) -> None:
        self.counters[f"refused_{reason}"] += 1
        log.warning("TURN over %s: %s (%s)", "TLS" if self._ssl else "TCP", reason, detail)
        event = AllocationFailed(reason)
        self._events.put_nowait(event)
        if self._on_event is not None:
            self._on_event(event)

    def _flush(self) -> None:
        transport = self._transport
        while (out := self.client.poll_transmit()) is not None:
            if transport is None or transport.is_closing():
                self.counters["dropped_not_connected"] += 1
                continue
            transport.write(out[0])
            self.counters["bytes_out"] += len(out[0])
        while (event := self.client.poll_event()) is not None:
            self._events.put_nowait(event)
            if self._on_event is not None:
                self._on_event(event)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.client.poll_timeout()
        if deadline is None or self._loop is None or self._transport is None:
            return
        delay = max(0.0, deadline.at - self._clock.now().mono)
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.client.handle_timeout(self._clock.now())
        self._flush()
