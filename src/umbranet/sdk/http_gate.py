"""A hosted stream whose requests pass the service's HTTP rules before the application reads them.

A `Listener` hands these out instead of plain streams when the controller's bind grant carries
HTTP rules for the service (`policy.HttpFragment`). Reads go through `policy.http_gate.HttpGate`:
the application only ever reads requests the rules allow; a refused request is answered here
(403 with the policy's reason, or 400/431 for a stream that is not valid HTTP/1.1), after the
application's answers to the requests it already read, then the stream is closed and the
application reads EOF.

Writes go to the dialer unchanged, but the gate reads them too: behind an Upgrade request the
dialer's bytes are held until the application's own answer says whether it switched protocols
(a 101 opens the tunnel; anything else means the held bytes are more requests to judge). A
server that switches to a protocol nobody was allowed to ask for has its stream reset. Everything
else (identity, closing) is the plain `Stream`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from umbranet.policy import HttpFragment, Subject
from umbranet.policy.http_gate import GateResult, GateStop, HttpGate, render_stop
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
        self._answer_due: GateStop | None = None

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            return await super().read(n)  # loops over self.read(chunk)
        if n == 0:
            return b""
        while not self._passed:
            if self._stopped:
                return b""
            if self._gate.holding:
                # Bytes behind a switch request wait for our own answer (see `write`), and
                # the circuit's window keeps the dialer from sending much more meanwhile.
                self._raise_if_reset()
                await self._wait()
                continue
            data = Stream.read_nowait(self, _READ_SIZE)
            if data is None:
                await self._wait()
                continue
            if not data:
                return b""  # a head cut short by EOF is never a request
            self._take(self._gate.feed(data))
        data = bytes(self._passed[:n])
        del self._passed[:n]
        return data

    def read_nowait(self, n: int) -> bytes | None:
        """Never the unfiltered bytes: readers of a gated stream wait in `read`."""
        return None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send the application's answer; the gate reads it to learn when a switch happened."""
        super().write(data)
        result = self._gate.feed_response(bytes(data))
        if result.passed or result.stop is not None:
            self._take(result)
            self.notify()  # a reader may be waiting for the bytes this answer released
        if self._answer_due is not None and not self._gate.unanswered:
            self._send_refusal()

    def write_eof(self) -> None:
        if self._answer_due is not None:
            self._send_refusal()  # the application ends without answering what it read
        super().write_eof()

    def at_eof(self) -> bool:
        return not self._passed and (self._stopped or super().at_eof())

    def _take(self, result: GateResult) -> None:
        self._passed += result.passed
        if result.stop is not None:
            self._refuse(result.stop)

    def _unread(self, data: bytes) -> None:
        self._passed[:0] = data

    def _refuse(self, stop: GateStop) -> None:
        """Answer the refused request ourselves and end the stream after what was allowed."""
        self._stopped = True
        log.warning(
            "http request refused service=%s dialer=%s status=%d code=%s reason=%r",
            self.service,
            self.peer.spiffe_id,
            stop.status,
            stop.code,
            stop.reason,
        )
        self._on_stop(stop)
        if self.is_closing():
            return
        if stop.code == "http_upgrade_unverified":
            # The server already answered with a switch: an HTTP error now would be read as
            # the new protocol's bytes. Reset, so neither side mistakes it for a clean end.
            self.abort(f"{stop.code}: {stop.reason}")
            return
        self._answer_due = stop
        if not self._gate.unanswered:
            self._send_refusal()
        # else: the application still answers requests it read before the refused one; the
        # refusal follows those answers, in order, as HTTP/1.1 requires (see `write`).

    def _send_refusal(self) -> None:
        stop, self._answer_due = self._answer_due, None
        if stop is None or self.is_closing():
            return
        Stream.write(self, render_stop(stop))
        self.close()
