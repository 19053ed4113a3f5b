"""Umbranet across a mesh of routers: SDK (A) -> router -> router [-> router] -> SDK (B).

The same throwaway network as `paths/umbranet.py`, with more routers in B, all real
`umbra router run` processes that find each other through the controller, link over mutual
TLS and install the routes the controller computes:

- `umbranet-mesh2`: the dialer is pinned to `bench-router` (198.18.0.2:7443), the host to
  `bench-router2` (:7444): every stream crosses two routers (one router-to-router link).
- `umbranet-mesh3`: a third router (:7445) hosts; admin link costs (`umbranet_setup mesh`)
  make the path follow the line router -> router2 -> router3 although all three link to each
  other: three routers, two router-to-router links.

Router-to-router hops are on B's loopback (one veth crossing in all, as on the one-hop
path), so the rows measure what each extra router costs: its CPU, its relaying and its
links, not a second network. Clients are `bench.paths.umbranet_async_client`, so the one-hop
reference is `umbranet-async`; `bench.report` prints each mesh row relative to it.

`connect` here is the first dial of a new stream: the DIAL crosses every router (tickets
checked at the first and the last) before the host's end-to-end handshake answers: the
path setup time of a stream.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.netns import Netns
from bench.paths import Endpoints, PyClient
from bench.paths.umbranet import (
    READY_WAIT,
    ROUTER_PORT,
    Umbranet,
    _env,
    _ns_run,
    _wait_file,
)

__all__ = ["UmbranetMesh2", "UmbranetMesh3"]


class UmbranetMesh2(Umbranet):
    name = "umbranet-mesh2"
    title = "Umbranet: SDK -> router -> router -> SDK (two routers, async SDK client)"
    client_module = "bench.paths.umbranet_async_client"
    client_note = "dialer in A runs the tests as coroutines on the SDK's loop"
    routers = 2

    def setup(self, ns_a: Netns, ns_b: Netns, tmpdir: Path) -> Endpoints:
        t0 = time.monotonic()
        env = _env()
        core = self.start_core(ns_b, tmpdir, env)
        home, files = tmpdir / "home", core.files
        setup = [sys.executable, "-m", "bench.paths.umbranet_setup"]
        mesh = [*setup, "mesh", "--home", str(home), "--out", str(files)]
        _ns_run(ns_b, [*mesh, "--routers", str(self.routers)], env)
        pids = {"controller(B)": core.controller, "router1(B)": core.router}
        addresses = [core.router_addr]
        for i in range(2, self.routers + 1):
            address = f"{ns_b.addr}:{ROUTER_PORT + i - 1}"
            run = [sys.executable, "-m", "umbranet.cli.main", "router", "run"]
            identity = ["--identity", str(files / f"router{i}.json")]
            pids[f"router{i}(B)"] = self.spawn(
                ns_b, [*run, *identity, "--listen", address], tmpdir / f"router{i}.log", env
            )
            wait = [*setup, "wait-router", "--home", str(home), "--address", address]
            _ns_run(ns_b, wait, env)
            addresses.append(address)
        ready = tmpdir / "host.ready"
        host_argv = [
            sys.executable,
            "-m",
            "bench.paths.umbranet_host",
            "--identity",
            str(files / "host.json"),
            "--ready",
            str(ready),
            "--routers",
            addresses[-1],
        ]
        pids["host SDK(B)"] = host = self.spawn(ns_b, host_argv, tmpdir / "host.log", env)
        _wait_file(ready, READY_WAIT, ns_b, host, tmpdir / "host.log")
        client = PyClient(
            ns_a.name,
            self.client_module,
            ("--identity", str(files / "dialer.json"), "--routers", addresses[0]),
            first_dial=True,
        )
        path = " -> ".join(["SDK(A)", *addresses, "SDK(B)"])
        return Endpoints(
            throughput=client,
            rr=client,
            cpu_pids=pids,
            notes=(
                f"path {path}; router-to-router links on B's loopback; {self.client_note}",
                "routes: the controller's (Dijkstra over keepalive RTT + admin link costs); "
                "the client's probe waits until the mesh has formed",
                f"setup (controller, {self.routers} routers, enrollments, host bind): "
                f"{time.monotonic() - t0:.1f} s",
            ),
        )


class UmbranetMesh3(UmbranetMesh2):
    name = "umbranet-mesh3"
    title = "Umbranet: SDK -> router -> router -> router -> SDK (three routers, async client)"
    routers = 3
