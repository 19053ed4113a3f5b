"""The dialing end of the Umbranet path: `bench.rr`'s clients over the SDK (namespace A).

The harness runs `python -m bench.paths.umbranet_client <mode> --identity dialer.json
[bench.rr options]`. Streams come from the blocking facade
(`umbranet.sdk.blocking.connect(identity).dial(service)`), which is what a non-async
application would use; `bench.rr.client_main` does the measuring and prints the JSON.
`latency`, `connect` and `probe` dial `bench-echo`, `blast` dials `bench-sink`.

One context per process: the link to the router (one TLS handshake) and the dial ticket are
made once and reused, as an application would. For `connect`, a few unmeasured dials run
first so the first sample does not include the ticket request and the link handshake.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import rr
from bench.paths.umbranet_setup import SERVICES
from umbranet.sdk import UmbraError
from umbranet.sdk.blocking import BlockingContext, BlockingStream, connect

__all__ = ["UmbraConn", "main"]

CONNECT_WARMUP = 5


class UmbraConn:
    """A `BlockingStream` shaped like the part of a socket `bench.rr` uses."""

    def __init__(self, stream: BlockingStream) -> None:
        self._stream = stream

    def sendall(self, data: bytes, /) -> None:
        self._stream.sendall(data)

    def recv(self, bufsize: int, /) -> bytes:
        return self._stream.recv(bufsize)

    def shutdown(self, how: int, /) -> None:
        if how in (socket.SHUT_WR, socket.SHUT_RDWR):
            self._stream.shutdown_write()

    def close(self) -> None:
        # Half-close instead of `BlockingStream.close()`: with the SDK as of this writing,
        # `Stream.close()` followed by the peer's FIN recurses without end
        # (notify -> _discard_inbound -> flush -> _dispatch -> notify) and kills the link.
        # Every caller here has read all it expects, so the two are equivalent on the wire:
        # our FIN goes out at once and the circuit ends when the peer's FIN arrives.
        self._stream.shutdown_write()


class _Dialer:
    """Owns the process's one blocking context; builds `bench.rr` dials for a service."""

    def __init__(self, identity: Path) -> None:
        self.identity = identity
        self.context: BlockingContext | None = None
        self.session_streams = True  # `connect-first`: every dial a full handshake

    def ctx(self) -> BlockingContext:
        if self.context is None:
            try:
                self.context = connect(self.identity, session_streams=self.session_streams)
            except UmbraError as exc:
                raise ConnectionError(f"{exc.code}: {exc.reason}") from exc
        return self.context

    def dial_for(self, purpose: str, args: argparse.Namespace) -> rr.Dial:
        service = SERVICES["sink" if purpose == "sink" else "echo"]

        def dial() -> rr.Conn:
            return UmbraConn(self.ctx().dial(service))

        self.session_streams = args.mode != "connect-first"
        if args.mode in ("connect", "connect-first"):
            rr.measure_connect(dial, CONNECT_WARMUP, args.size)
        return dial

    def close(self) -> None:
        if self.context is not None:
            self.context.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--identity" not in args:
        print("bench.paths.umbranet_client: --identity FILE is required", file=sys.stderr)
        return 2
    i = args.index("--identity")
    identity = Path(args[i + 1])
    rest = args[:i] + args[i + 2 :]
    dialer = _Dialer(identity)
    try:
        return rr.client_main(rest, dial_for=dialer.dial_for)
    finally:
        dialer.close()


if __name__ == "__main__":
    raise SystemExit(main())
