"""Umbranet through the agent: unmodified iperf3 and TCP clients -> agent -> router -> agent.

The SDK paths (`bench.paths.umbranet`) measure applications that link the SDK; this one
measures what a user gets with no code change: `umbra up` on both machines, the client-side
agent in namespace A giving every dialable service a loopback listener, the host-side agent
in B forwarding each stream to the real server on B's loopback (the service's host address).
So iperf3, the echo and the sink are the same servers the peer paths use, and the clients in
A are stock iperf3 and `bench.rr` pointed at A's 127.0.0.1.

Network: the same throwaway controller and router as the SDK paths (`umbranet_setup
provision --agent` adds three services with host addresses and two device identities):

- `bench-tcp-iperf` -> B 127.0.0.1:5201, loopback port 15201 in A,
- `bench-tcp-echo`  -> B 127.0.0.1:7007, loopback port 17007 in A,
- `bench-tcp-sink`  -> B 127.0.0.1:7008, loopback port 17008 in A.

The ports in A are fixed with `umbra up --port SERVICE=PORT`, so the report and a user's
command line agree. CPU of the path = both agents + router + controller.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.netns import Netns
from bench.paths import ECHO_PORT, IPERF_PORT, SINK_PORT, Endpoints, TcpTarget
from bench.paths.umbranet import (
    Umbranet,
    _env,
)

__all__ = ["AGENT_PORTS", "UmbranetAgent"]

# service -> the loopback port the client-side agent listens on in A
AGENT_PORTS = {
    "bench-tcp-iperf": 10000 + IPERF_PORT,
    "bench-tcp-echo": 10000 + ECHO_PORT,
    "bench-tcp-sink": 10000 + SINK_PORT,
}
LISTEN_WAIT = 60.0


class UmbranetAgent(Umbranet):
    name = "umbranet-agent"
    title = (
        "Umbranet through the agent: unmodified TCP clients -> `umbra up` (A, loopback "
        "listeners) -> router -> `umbra up` (B, forwards to the servers on B's loopback)"
    )

    def setup(self, ns_a: Netns, ns_b: Netns, tmpdir: Path) -> Endpoints:
        t0 = time.monotonic()
        env = _env()
        core = self.start_core(ns_b, tmpdir, env, agent=True)
        files, router, controller = core.files, core.router, core.controller
        router_addr, controller_addr = core.router_addr, core.controller_addr
        host_agent = self.spawn(
            ns_b,
            _up(files / "agent-host.json", tmpdir / "agent-b"),
            tmpdir / "agent-b.log",
            env,
        )
        ports = [arg for s, p in AGENT_PORTS.items() for arg in ("--port", f"{s}={p}")]
        client_agent = self.spawn(
            ns_a,
            [*_up(files / "agent-dialer.json", tmpdir / "agent-a"), *ports],
            tmpdir / "agent-a.log",
            env,
        )
        for port in AGENT_PORTS.values():
            ns_a.wait_listen(port, LISTEN_WAIT)
        # The host agent binds through the router asynchronously; the harness's probe
        # (bench.rr probe, retried for probe_wait seconds) waits until a stream gets through.
        return Endpoints(
            throughput=TcpTarget(ns_a.name, "127.0.0.1", AGENT_PORTS["bench-tcp-iperf"]),
            rr=TcpTarget(ns_a.name, "127.0.0.1", AGENT_PORTS["bench-tcp-echo"]),
            cpu_pids={
                "agent(A)": client_agent,
                "router(B)": router,
                "agent(B)": host_agent,
                "controller(B)": controller,
            },
            notes=(
                f"router {router_addr}, controller {controller_addr} (both in B); clients in A "
                "use the client agent's loopback ports "
                + ", ".join(f"{s}={p}" for s, p in AGENT_PORTS.items())
                + "; the host agent in B forwards to B's 127.0.0.1 servers",
                "link: mutual TLS (Python ssl on uvloop); streams: Noise XX + AES-256-GCM end "
                "to end; a TCP hop and a relay on each side (app <-> agent)",
                "connect = new TCP connection to the client agent (which dials a new "
                "end-to-end stream; the host agent opens a TCP connection to the server) + "
                "one 64 B round trip + close",
                f"setup (controller init, enrollments, router, both agents listening): "
                f"{time.monotonic() - t0:.1f} s",
            ),
        )


def _up(identity: Path, state_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "umbranet.cli.main",
        "up",
        "--identity",
        str(identity),
        "--state-dir",
        str(state_dir),
    ]
