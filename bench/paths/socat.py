"""socat relays without crypto: the cost of copying through user space, one or two hops."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from bench.netns import Netns
from bench.paths import ECHO_PORT, IPERF_PORT, Endpoints, TcpTarget, tool_version
from bench.paths._base import DaemonPath

__all__ = ["Socat1", "Socat2"]


def _relay(listen_ip: str, listen_port: int, dest_ip: str, dest_port: int) -> list[str]:
    # socat defaults (8 KiB buffer, one forked child per connection), as a user would run it
    return [
        "socat",
        f"TCP-LISTEN:{listen_port},bind={listen_ip},reuseaddr,fork",
        f"TCP:{dest_ip}:{dest_port}",
    ]


class Socat2(DaemonPath):
    """A: 127.0.0.1 -> socat (A) -> veth -> socat (B) -> servers (the shape of stunnel/ssh)."""

    name = "socat2"
    title = "socat, two relay hops, no crypto"
    binaries: ClassVar[Mapping[str, str]] = {"socat": "socat"}

    def versions(self) -> dict[str, str]:
        return {"socat": tool_version(["socat", "-V"], 1)}

    def setup(self, ns_a: Netns, ns_b: Netns, tmpdir: Path) -> Endpoints:
        pids: dict[str, int] = {}
        for label, b_port, a_port, dest in (
            ("iperf", 9201, 35201, IPERF_PORT),
            ("echo", 9007, 37007, ECHO_PORT),
        ):
            pids[f"socat-{label}(B)"] = self.spawn(
                ns_b, _relay(ns_b.addr, b_port, "127.0.0.1", dest), tmpdir / f"b-{label}.log"
            )
            ns_b.wait_listen(b_port)
            pids[f"socat-{label}(A)"] = self.spawn(
                ns_a, _relay("127.0.0.1", a_port, ns_b.addr, b_port), tmpdir / f"a-{label}.log"
            )
            ns_a.wait_listen(a_port)
        return Endpoints(
            throughput=TcpTarget(ns_a.name, "127.0.0.1", 35201),
            rr=TcpTarget(ns_a.name, "127.0.0.1", 37007),
            cpu_pids=pids,
        )


class Socat1(DaemonPath):
    """A: 127.0.0.1 -> socat (A) -> veth -> servers in B: one relay hop."""

    name = "socat1"
    title = "socat, one relay hop, no crypto"
    binaries: ClassVar[Mapping[str, str]] = {"socat": "socat"}

    def versions(self) -> dict[str, str]:
        return {"socat": tool_version(["socat", "-V"], 1)}

    def setup(self, ns_a: Netns, ns_b: Netns, tmpdir: Path) -> Endpoints:
        pids: dict[str, int] = {}
        for label, a_port, dest in (("iperf", 45201, IPERF_PORT), ("echo", 47007, ECHO_PORT)):
            pids[f"socat-{label}(A)"] = self.spawn(
                ns_a, _relay("127.0.0.1", a_port, ns_b.addr, dest), tmpdir / f"a-{label}.log"
            )
            ns_a.wait_listen(a_port)
        return Endpoints(
            throughput=TcpTarget(ns_a.name, "127.0.0.1", 45201),
            rr=TcpTarget(ns_a.name, "127.0.0.1", 47007),
            cpu_pids=pids,
        )
