"""Umbranet's own data plane as a benchmark path (the plug-in point; the data plane fills it in).

Until `umbranet.sdk` exports `Context` (and `SETUP_WRITTEN` below is True) the path reports
"not available yet" and the harness skips it with that note. `setup` must (see
`bench/paths/__init__.py` for the contract, `raw.py`/`stunnel.py` for examples):

1. Mint throwaway identities under `tmpdir` (a network CA, a router, a dialing identity in A
   and a hosting identity in B; e.g. with `umbranet.testing`'s PKI factories or
   `umbra --home <tmpdir> controller init`), and the services it dials: one ending at B's
   iperf3 (127.0.0.1:IPERF_PORT), one at the echo server (ECHO_PORT), one at the sink
   (SINK_PORT).
2. Start the router, e.g. in namespace B on `ns_b.addr` (the only listening port), and the
   hosting endpoint in B, each with `self.spawn(ns, argv, log)` so the harness owns the PIDs.
3. Expose the dialing side in A in one of two ways:
   - a forwarder process in A listening on 127.0.0.1:<port> per service (agent-like), and
     return `TcpTarget(ns_a.name, "127.0.0.1", port)` for `throughput` (-> iperf3) and
     `rr` (-> echo); or
   - in-process SDK clients: return `PyClient(ns_a.name, "bench.paths.umbranet_client",
     (<identity/config args>...))` for `rr` and/or `throughput`, where that module calls
     `bench.rr.client_main(dial_for=...)` with a dial that returns a blocking stream
     (`sendall`, `recv`, `shutdown`, `close`) from the SDK (`blast` goes to the sink service).
4. Return `cpu_pids` with every process the bytes pass through except the clients and the
   harness's servers (router, hosting endpoint, forwarder), labelled e.g. "router(B)".
5. Wait until the path works before returning, or rely on the harness's probe (30 s).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from bench.netns import Netns
from bench.paths import Endpoints
from bench.paths._base import DaemonPath

__all__ = ["SETUP_WRITTEN", "Umbranet"]

# Flip to True when `Umbranet.setup` below is filled in; until then the path is skipped with
# "not available yet" even though the SDK exists.
SETUP_WRITTEN = False


class Umbranet(DaemonPath):
    name = "umbranet"
    title = "Umbranet: SDK -> router -> SDK (mTLS links, end-to-end AEAD)"

    def unavailable(self) -> str | None:
        try:
            sdk = importlib.import_module("umbranet.sdk")
        except ImportError as exc:
            return f"not available yet (cannot import umbranet.sdk: {exc})"
        if not hasattr(sdk, "Context"):
            return "not available yet (umbranet.sdk does not provide Context)"
        if not SETUP_WRITTEN:
            return "not available yet (bench/paths/umbranet.py setup() is not written)"
        return None

    def versions(self) -> dict[str, str]:
        try:
            pkg = importlib.import_module("umbranet")
        except ImportError:
            return {}
        return {"umbranet": str(getattr(pkg, "__version__", "source tree"))}

    def setup(self, ns_a: Netns, ns_b: Netns, tmpdir: Path) -> Endpoints:
        raise NotImplementedError(
            "umbranet.sdk has Context, but bench/paths/umbranet.py setup() is not written yet"
        )
