"""The Path interface: how a tunnel, overlay or Umbranet plugs into the harness.

A path carries traffic from namespace A (clients) to the servers the harness runs in namespace B:

- `iperf3 -s` on B:`IPERF_PORT` (all addresses),
- the echo server on B:`ECHO_PORT` and the byte sink on B:`SINK_PORT` (`bench.rr serve`).

`setup(ns_a, ns_b, tmpdir)` starts whatever the path needs (daemons via `ns.spawn(...)`, so the
harness can always kill them) and returns `Endpoints`: where the clients in A connect for bulk
throughput and for request/response + connect, and the PIDs whose CPU belongs to the path.
Each target is either a `TcpTarget` (an address reachable from A that ends at the matching
server in B: the harness drives it with iperf3 / `bench.rr`), or a `PyClient` (a Python module
run in A that speaks `bench.rr`'s client command line and JSON, for data planes that are a
library rather than a forwarder). `teardown()` stops what `setup` started; the harness also
kills anything left in the namespaces afterwards.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bench.netns import Netns

__all__ = [
    "ECHO_PORT",
    "IPERF_PORT",
    "SINK_PORT",
    "BenchPath",
    "Endpoints",
    "PyClient",
    "TcpTarget",
    "have_binary",
    "tool_version",
]

IPERF_PORT = 5201
ECHO_PORT = 7007
SINK_PORT = 7008


@dataclass(frozen=True)
class TcpTarget:
    """A TCP address that a client in namespace `ns` connects to."""

    ns: str
    host: str
    port: int


@dataclass(frozen=True)
class PyClient:
    """A client module run as `python -m <module> <mode> [args...] --count/--seconds ...` in `ns`.

    It must accept `bench.rr`'s client command line (`latency`, `connect`, `blast`, `probe`
    and their options) and print one JSON object in `bench.rr`'s format; the easy way is
    `bench.rr.client_main(dial_for=...)`. For `blast` the far end must be a `bench.rr` sink
    (or speak its protocol).
    """

    ns: str
    module: str
    args: tuple[str, ...] = ()
    # It also runs `connect-first` (a dial with no session to reuse), measured as its own row.
    first_dial: bool = False


@dataclass(frozen=True)
class Endpoints:
    """What `setup` hands back to the harness."""

    throughput: TcpTarget | PyClient  # TcpTarget: ends at iperf3 -s; PyClient: runs `blast`
    rr: TcpTarget | PyClient  # ends at the echo server; used for latency, connect, probe
    cpu_pids: Mapping[str, int] = field(default_factory=dict)  # label -> root PID of a tree
    notes: tuple[str, ...] = ()  # facts worth printing (cipher, MTU, ...)


class BenchPath(Protocol):
    """One way to get from A to B. Paths are instantiated once per run and set up once."""

    @property
    def name(self) -> str:
        """Short key used on the command line and in tables, e.g. "stunnel"."""
        ...

    @property
    def title(self) -> str:
        """Human description, e.g. "stunnel4 mutual TLS, two ends"."""
        ...

    @property
    def binaries(self) -> Mapping[str, str]:
        """Executable -> Debian package that provides it (installed unless --no-install)."""
        ...

    def unavailable(self) -> str | None:
        """None if the path can run here, else why not (checked after installing packages)."""
        ...

    def versions(self) -> dict[str, str]:
        """Tool name -> version string, for the report."""
        ...

    def setup(self, ns_a: Netns, ns_b: Netns, tmpdir: Path) -> Endpoints:
        """Start the path; raise on failure (the harness records it and moves on)."""
        ...

    def teardown(self) -> None:
        """Stop what setup started (the harness kills leftovers in the namespaces anyway)."""
        ...


def have_binary(name: str) -> bool:
    return shutil.which(name) is not None or Path("/usr/sbin", name).exists()


def tool_version(argv: list[str], line: int = 0, prefix: str = "") -> str:
    """The `line`-th non-empty output line (starting with `prefix`) of a version command."""
    try:
        proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = [x.strip() for x in (proc.stdout + proc.stderr).splitlines() if x.strip()]
    lines = [x for x in lines if x.startswith(prefix)]
    return lines[line] if len(lines) > line else "unknown"
