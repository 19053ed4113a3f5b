"""A loopback UDP bridge to a TURN server reached over TCP or TLS.

NAT traversal's TURN client shares the WireGuard UDP socket (`proto/traversal.py`): the
device's datagrams to a peer heard through the relay leave wrapped for the TURN server
from that socket, and the server's answers come back to it. To reach a server only over
TCP or TLS without changing any of that, the agent points the same client at this bridge:
a UDP socket on 127.0.0.1 that carries each datagram it gets as one message on the stream
(ChannelData padded to 4 bytes, as RFC 8656 §12.5 asks on a stream) and sends each message
the stream brings (cut by `proto/turn_stream.StreamDeframer`) back as one datagram to the
socket that last wrote to it. The UDP client's retransmissions over loopback may reach the
server twice; TURN servers answer a repeated transaction as the first.

Only the first local socket to write is served (`peer`); datagrams from any other source
are dropped and counted (`refused_foreign_source`): on a shared host another process must
not borrow our allocation. A stream out of step or closed ends the bridge (`closed`), with
the reason logged and counted; the agent's next refresh allocates anew.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from typing import cast

from umbranet.aio.marked import create_connection
from umbranet.proto.turn_stream import StreamDeframer, pad_channel_data

__all__ = ["TurnBridge"]

log = logging.getLogger("umbranet.agent.nat")

Address = tuple[str, int]


class TurnBridge(asyncio.DatagramProtocol):
    """`await TurnBridge.open(server, ssl_context=...)`; `address` is where to send."""

    def __init__(self) -> None:
        self.address: Address = ("127.0.0.1", 0)
        self.peer: Address | None = None
        self.counters: Counter[str] = Counter()
        self.closed = asyncio.Event()
        self.reason: str | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._stream: asyncio.Transport | None = None
        self._deframer = StreamDeframer()

    @classmethod
    async def open(
        cls,
        server: Address,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = 10.0,
        mark: int | None = None,
    ) -> TurnBridge:
        """Connect to `server` (TLS with `ssl_context`) and bind the loopback socket; raises
        `OSError` when the server cannot be reached (counted as `refused_connect_failed`).
        `mark`: a firewall mark for the connection's packets (`aio/marked.py`)."""
        bridge = cls()
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                create_connection(
                    lambda: _StreamSide(bridge),
                    server[0],
                    server[1],
                    ssl=ssl_context,
                    server_hostname=server_hostname if ssl_context is not None else None,
                    mark=mark,
                ),
                timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            bridge.counters["refused_connect_failed"] += 1
            log.warning("TURN bridge: %s:%d unreachable over a stream: %r", *server, exc)
            raise OSError(f"TURN server {server[0]}:{server[1]} unreachable: {exc!r}") from exc
        udp, _ = await loop.create_datagram_endpoint(lambda: bridge, local_addr=("127.0.0.1", 0))
        bridge._udp = udp
        host, port = udp.get_extra_info("sockname")[:2]
        bridge.address = (str(host), int(port))
        return bridge

    def close(self, reason: str = "closed") -> None:
        if self.reason is None:
            self.reason = reason
        for transport in (self._stream, self._udp):
            if transport is not None and not transport.is_closing():
                transport.close()
        self.closed.set()

    def statistics(self) -> dict[str, object]:
        return {
            "address": list(self.address),
            "closed": self.reason,
            "io": dict(self.counters),
            "framing": dict(self._deframer.counters),
        }

    # -- the loopback side -----------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        source = (str(addr[0]), int(str(addr[1])))
        if self.peer is None:
            self.peer = source
        if source != self.peer:
            self.counters["refused_foreign_source"] += 1
            return
        stream = self._stream
        if stream is None or stream.is_closing():
            self.counters["dropped_stream_closed"] += 1
            return
        channel_data = len(data) >= 4 and data[0] & 0xC0 == 0x40
        stream.write(pad_channel_data(data) if channel_data else data)
        self.counters["to_server"] += 1

    # -- the stream side -------------------------------------------------------------------

    def _from_server(self, data: bytes) -> None:
        self._deframer.feed(data)
        while (message := self._deframer.poll_message()) is not None:
            if self._udp is None or self.peer is None:
                self.counters["dropped_no_peer"] += 1
                continue
            self._udp.sendto(message, self.peer)
            self.counters["from_server"] += 1
        broken = self._deframer.broken
        if broken is not None:
            self.counters[f"refused_stream_{broken}"] += 1
            log.warning("TURN bridge: stream out of step (%s): closed", broken)
            self.close(f"stream_{broken}")

    def _stream_lost(self, exc: Exception | None) -> None:
        if self.reason is None:
            self.counters["stream_closed"] += 1
            log.warning("TURN bridge: the server closed the stream (%r)", exc)
        self.close("stream_closed")


class _StreamSide(asyncio.Protocol):
    def __init__(self, bridge: TurnBridge) -> None:
        self._bridge = bridge

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: duck-typed
        self._bridge._stream = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._bridge._from_server(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._bridge._stream_lost(exc)
