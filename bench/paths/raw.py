"""The reference paths: straight over the veth, no tunnel (what every other path is divided by)."""

from __future__ import annotations

from pathlib import Path

from bench.netns import Netns
from bench.paths import ECHO_PORT, IPERF_PORT, SINK_PORT, Endpoints, PyClient, TcpTarget
from bench.paths._base import DaemonPath

__all__ = ["Raw", "RawPy"]


class Raw(DaemonPath):
    name = "raw"
    title = "raw veth, no tunnel (the limit)"

    def setup(self, ns_a: Netns, ns_b: Netns, tmpdir: Path) -> Endpoints:
        return Endpoints(
            throughput=TcpTarget(ns_a.name, ns_b.addr, IPERF_PORT),
            rr=TcpTarget(ns_a.name, ns_b.addr, ECHO_PORT),
        )


class RawPy(DaemonPath):
    """Raw veth driven through the `PyClient` plug-in route (Python blast to the sink).

    It is the ceiling of a Python sender/receiver pair on this machine, and it keeps the
    plug-in route that Umbranet's SDK path may use exercised by the smoke run.
    """

    name = "rawpy"
    title = "raw veth, Python clients (bench.rr blast/latency)"

    def setup(self, ns_a: Netns, ns_b: Netns, tmpdir: Path) -> Endpoints:
        return Endpoints(
            throughput=PyClient(
                ns_a.name, "bench.rr", ("--host", ns_b.addr, "--port", str(SINK_PORT))
            ),
            rr=PyClient(ns_a.name, "bench.rr", ("--host", ns_b.addr, "--port", str(ECHO_PORT))),
        )
