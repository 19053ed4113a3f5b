"""Request/response, connect and bulk clients, and the echo/sink server they talk to.

The harness runs this module inside the namespaces (`python -m bench.rr <mode> ...`): `serve` in
namespace B, the client modes in A. Every client mode prints exactly one JSON object on stdout.

The measuring functions take a `Dial` (a zero-argument callable returning a connected, blocking,
socket-like `Conn`) so that a path whose data plane is a library rather than a TCP forwarder
(Umbranet's SDK) measures with the same code: its client module calls
`client_main(dial_for=...)` and gets the same command line and the same JSON.

Protocols (all on plain byte streams):
- echo: whatever arrives is sent back;
- sink: read until the writer half-closes, then answer the byte count as 8 bytes big-endian
  and close, so the sender measures what really arrived end to end, not what it buffered.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from bench.safety import check_target

__all__ = [
    "Conn",
    "Dial",
    "client_main",
    "client_parser",
    "main",
    "measure_blast",
    "measure_connect",
    "measure_latency",
    "probe",
    "serve",
    "start_servers",
    "summarize",
    "tcp_dial",
]

ECHO_PORT = 7007
SINK_PORT = 7008


class Conn(Protocol):
    """The part of a blocking socket the clients use."""

    def sendall(self, data: bytes, /) -> None: ...
    def recv(self, bufsize: int, /) -> bytes: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...


Dial = Callable[[], Conn]
DialFor = Callable[[str, argparse.Namespace], Dial]


def tcp_dial(host: str, port: int, timeout: float = 10.0) -> Dial:
    """A `Dial` for plain TCP with TCP_NODELAY (what every peer client and server uses too)."""
    check_target(host)

    def dial() -> Conn:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    return dial


def summarize(samples_ns: Sequence[int]) -> dict[str, float]:
    """Percentiles (nearest rank) and mean of durations, in microseconds."""
    if not samples_ns:
        return {"count": 0}
    ordered = sorted(samples_ns)
    n = len(ordered)

    def pct(p: float) -> float:
        rank = max(1, min(n, round(p / 100 * n + 0.5)))
        return ordered[rank - 1] / 1000

    return {
        "count": n,
        "p50_us": pct(50),
        "p90_us": pct(90),
        "p99_us": pct(99),
        "mean_us": sum(ordered) / n / 1000,
        "min_us": ordered[0] / 1000,
        "max_us": ordered[-1] / 1000,
    }


def measure_latency(dial: Dial, count: int, warmup: int = 50, size: int = 64) -> dict[str, Any]:
    """`count` round trips of `size` bytes on one connection, after `warmup` unmeasured ones."""
    payload = b"r" * size
    conn = dial()
    try:
        samples: list[int] = []
        for i in range(warmup + count):
            t0 = time.perf_counter_ns()
            conn.sendall(payload)
            _recv_exact(conn, size)
            if i >= warmup:
                samples.append(time.perf_counter_ns() - t0)
    finally:
        conn.close()
    return {"mode": "latency", "size": size, **summarize(samples)}


def measure_connect(dial: Dial, count: int, size: int = 64) -> dict[str, Any]:
    """`count` times: open a new connection, one round trip of `size` bytes, close."""
    payload = b"c" * size
    samples: list[int] = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        conn = dial()
        try:
            conn.sendall(payload)
            _recv_exact(conn, size)
        finally:
            conn.close()
        samples.append(time.perf_counter_ns() - t0)
    return {"mode": "connect", "size": size, **summarize(samples)}


def measure_blast(
    dial: Dial,
    seconds: float,
    streams: int = 1,
    chunk: int = 128 * 1024,
    *,
    min_bytes: int = 0,
    max_seconds: float = 0.0,
) -> dict[str, Any]:
    """Send for `seconds` on `streams` connections to a sink; count what the sink acknowledged.

    With `min_bytes`, keep sending past `seconds` until that many bytes left in total (split
    evenly over the streams), but never past `max_seconds`: a slow path still moves enough
    data for a stable figure, and the run stays bounded.
    """
    conns = [dial() for _ in range(streams)]
    acked = [0] * streams
    errors: list[str] = []
    block = b"\0" * chunk
    start = threading.Barrier(streams + 1)
    deadline = [0.0, 0.0]  # soft (seconds), hard (max_seconds)
    per_stream = -(-min_bytes // streams) if min_bytes > 0 else 0

    def worker(i: int) -> None:
        conn = conns[i]
        sent = 0
        try:
            start.wait()
            while True:
                now = time.monotonic()
                if now >= deadline[0] and (sent >= per_stream or now >= deadline[1]):
                    break
                conn.sendall(block)
                sent += chunk
            conn.shutdown(socket.SHUT_WR)
            acked[i] = int.from_bytes(_recv_exact(conn, 8), "big")
        except (OSError, ConnectionError) as exc:
            errors.append(f"stream {i}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    deadline[0] = t0 + seconds
    deadline[1] = t0 + max(seconds, max_seconds)
    start.wait()
    for t in threads:
        t.join(max(seconds, max_seconds) + 60)
    elapsed = time.monotonic() - t0
    total = sum(acked)
    return {
        "mode": "blast",
        "streams": streams,
        "bytes": total,
        "seconds": elapsed,
        "bits_per_second": total * 8 / elapsed if elapsed > 0 else 0.0,
        "errors": errors,
    }


def probe(dial: Dial, wait: float, size: int = 64) -> dict[str, Any]:
    """Retry connect + one round trip until it works or `wait` seconds pass (tunnels warm up)."""
    deadline = time.monotonic() + wait
    tries = 0
    last = ""
    while True:
        tries += 1
        try:
            result = measure_connect(dial, 1, size)
            return {"mode": "probe", "ok": True, "tries": tries, "rt_us": result["p50_us"]}
        except (OSError, ConnectionError) as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            return {"mode": "probe", "ok": False, "tries": tries, "error": last}
        time.sleep(0.2)


def serve(bind: str, echo_port: int, sink_port: int, max_seconds: float) -> None:
    """Echo on `echo_port` and sink on `sink_port`, a thread per connection; exit after a while."""
    start_servers(bind, echo_port, sink_port)
    time.sleep(max_seconds)


def start_servers(bind: str, echo_port: int, sink_port: int) -> tuple[int, int]:
    """Start the echo and sink servers in daemon threads; return their ports (0 = any free)."""
    ports = []
    for port, handler in ((echo_port, _echo), (sink_port, _sink)):
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((bind, port))
        lsock.listen(512)
        ports.append(lsock.getsockname()[1])
        threading.Thread(target=_accept_loop, args=(lsock, handler), daemon=True).start()
    return ports[0], ports[1]


def client_main(argv: Sequence[str] | None = None, dial_for: DialFor | None = None) -> int:
    """Run one client mode and print its JSON result.

    `dial_for(purpose, args)` with purpose "echo" (latency, connect, probe) or "sink" (blast)
    returns the `Dial` to use; the default dials TCP to --host/--port.
    """
    args = client_parser().parse_args(argv)
    chooser = dial_for or _tcp_dial_for
    if args.mode == "latency":
        result = measure_latency(chooser("echo", args), args.count, args.warmup, args.size)
    elif args.mode in ("connect", "connect-first"):
        result = measure_connect(chooser("echo", args), args.count, args.size)
        result["mode"] = args.mode
    elif args.mode == "blast":
        result = measure_blast(
            chooser("sink", args),
            args.seconds,
            args.streams,
            min_bytes=args.min_bytes,
            max_seconds=args.max_seconds,
        )
    else:
        result = probe(chooser("echo", args), args.wait, args.size)
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok", True) and not result.get("errors") else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`serve` or one of the client modes (see `client_main`)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["serve"]:
        parser = argparse.ArgumentParser(prog="bench.rr serve")
        parser.add_argument("--bind", default="0.0.0.0")
        parser.add_argument("--echo-port", type=int, default=ECHO_PORT)
        parser.add_argument("--sink-port", type=int, default=SINK_PORT)
        parser.add_argument("--max-seconds", type=float, default=3600.0)
        args = parser.parse_args(args_list[1:])
        serve(args.bind, args.echo_port, args.sink_port, args.max_seconds)
        return 0
    return client_main(args_list)


def client_parser() -> argparse.ArgumentParser:
    """The client modes' command line (also parsed by plug-in clients that do not use Dial)."""
    parser = argparse.ArgumentParser(prog="bench.rr")
    # connect-first: every dial is a first one (for Umbranet: a full end-to-end handshake,
    # no session to open the stream in); a TCP connect is always a first one.
    parser.add_argument("mode", choices=["latency", "connect", "connect-first", "blast", "probe"])
    parser.add_argument("--host", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--min-bytes", type=int, default=0, help="blast: send at least this")
    parser.add_argument("--max-seconds", type=float, default=0.0, help="blast: hard time cap")
    parser.add_argument("--wait", type=float, default=30.0)
    return parser


def _tcp_dial_for(purpose: str, args: argparse.Namespace) -> Dial:
    del purpose  # the port on the command line already says which server
    return tcp_dial(args.host, args.port)


def _recv_exact(conn: Conn, n: int) -> bytes:
    parts: list[bytes] = []
    while n:
        data = conn.recv(n)
        if not data:
            raise ConnectionError("peer closed mid-message")
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def _accept_loop(lsock: socket.socket, handler: Callable[[socket.socket], None]) -> None:
    while True:
        conn, _ = lsock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_guarded, args=(handler, conn), daemon=True).start()


def _guarded(handler: Callable[[socket.socket], None], conn: socket.socket) -> None:
    try:
        handler(conn)
    except OSError:
        pass  # a client went away mid-test: its own result says so
    finally:
        conn.close()


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def _sink(conn: socket.socket) -> None:
    buf = bytearray(256 * 1024)
    total = 0
    while n := conn.recv_into(buf):
        total += n
    conn.sendall(total.to_bytes(8, "big"))


if __name__ == "__main__":
    raise SystemExit(main())
