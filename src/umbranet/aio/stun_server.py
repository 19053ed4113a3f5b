"""A STUN binding responder on a UDP port (the IO shell of `proto.stun.BindingResponder`).

Routers run one (`umbra router run --stun-listen HOST:PORT`) so endpoints learn their
server-reflexive address and how their NAT maps them. It answers well-formed binding
requests only and never sends more than one datagram per datagram received, each no larger
than a binding response (about 40 bytes for 20 received), so it cannot amplify.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from umbranet.proto.stun import BindingResponder

__all__ = ["StunServer"]


class StunServer:
    """``async with StunServer(host, port) as server:`` answers until the block ends."""

    def __init__(self, host: str = "127.0.0.1", port: int = 3478) -> None:
        self.host, self.port = host, port
        self.responder = BindingResponder()
        self._transport: asyncio.DatagramTransport | None = None

    async def __aenter__(self) -> StunServer:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Answer(self), local_addr=(self.host, self.port), family=family
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def address(self) -> str:
        assert self._transport is not None, "not started"
        host, port = self._transport.get_extra_info("sockname")[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def statistics(self) -> dict[str, int]:
        return self.responder.statistics()


class _Answer(asyncio.DatagramProtocol):
    def __init__(self, server: StunServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self._server.responder.handle_datagram(data, (str(addr[0]), int(addr[1])))
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        self._server.responder.counters["socket_errors"] += 1
