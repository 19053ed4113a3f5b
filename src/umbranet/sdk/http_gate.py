"""A hosted stream whose requests pass the service's HTTP rules before the application reads them.

A `Listener` hands these out instead of plain streams when the controller's bind grant carries
HTTP rules for the service (`policy.HttpFragment`). Reads go through `policy.http_gate.HttpGate`:
the application only ever reads requests the rules allow; a refused request is answered here
(403 with the policy's reason, or 400/431 for a stream that is not valid HTTP/1.1), the stream
is closed, and the application reads EOF. Everything else (writes, identity, closing) is the
plain `Stream`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from umbranet.policy import HttpFragment, Subject
from umbranet.policy.http_gate import GateStop, HttpGate, render_stop
from umbranet.sdk.stream import Stream

if TYPE_CHECKING:
    from umbranet.proto.circuit import Circuit
    from umbranet.sdk.connection import RouterConnection

__all__ = ["GatedStream"]

log = logging.getLogger("umbranet.sdk")

_READ_SIZE = 65536


class GatedStream(Stream):
    """A `Stream` whose inbound bytes pass an `HttpGate` for the dialer's identity."""

    def __init__(
        self,
        connection: RouterConnection,
        circuit: Circuit,
        service: str,
        rules: HttpFragment,
        on_stop: Callable[[GateStop], None],
    ) -> None:
        super().__init__(connection, circuit, service)
        peer = self.peer
        subject = Subject.of(peer.name, peer.attributes)
        self._gate = HttpGate(lambda method, path: rules.decide(subject, method, path))
        self._on_stop = on_stop
        self._passed = bytearray()
        self._stopped = False

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            return await super().read(n)  # loops over self.read(chunk)
        if n == 0:
            return b""
        while not self._passed:
            if self._stopped:
                return b""
            data = await super().read(_READ_SIZE)
            if not data:
                return b""  # a head cut short by EOF is never a request
            result = self._gate.feed(data)
            self._passed += result.passed
            if result.stop is not None:
                self._refuse(result.stop)
        data = bytes(self._passed[:n])
        del self._passed[:n]
        return data

    def at_eof(self) -> bool:
        return not self._passed and (self._stopped or super().at_eof())

    def _unread(self, data: bytes) -> None:
        self._passed[:0] = data

    def _refuse(self, stop: GateStop) -> None:
        """Answer the refused request ourselves and end the stream after what was allowed."""
        self._stopped = True
        log.warning(
            "http request refused service=%s dialer=%s status=%d reason=%s",
            self.service,
            self.peer.spiffe_id,
            stop.status,
            stop.reason,
        )
        self._on_stop(stop)
        if not self.is_closing():
            self.write(render_stop(stop))
            self.close()
