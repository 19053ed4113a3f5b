"""Issue 11's process tests in network namespaces: five `umbra router run` processes in a
ring plus a chord (`mesh_lab.py`), the dialer and the host(s) in namespaces of their own,
attached to different routers; real veth wires, so routers link only where a wire is.

- A router in the middle of a transfer's path is SIGKILLed: the stream moves to the other
  side of the ring; sha256 equal both ways and no error seen by the application. The size
  is 64 MiB here and 1 GiB when ``CI=true`` (the issue's figure; about 60 s and more on a
  2-core machine, too long for every local run).
- The host's own router is SIGKILLed while a second host of the service is up: a stream
  moves only to the same host session. A host attached only to the dead router cannot be
  reached again, so the stream ends with an error and the application's next dial is
  answered by the other host (a new stream); a host attached to two routers keeps the
  stream, even though the other host is nearer. Documented in docs/mesh.md.
- Revoking the host's identity closes a live stream across three routers (two
  router-to-router hops) with ``revoked`` at the dialer; the time from the admin call to
  the close is printed (the benchmark keeps the figure: no timing assertion here).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.mesh_lab import MeshLab

CI = os.environ.get("CI") == "true"
SERVICE = "bulk"
IDENTITIES = [("dialer", ["bulk-c"]), ("host1", ["bulk-h"]), ("host2", ["bulk-h"])]


def _missing() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs Linux and root (network namespaces, veth links)"
    for tool in ("ip", "curl"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


@pytest.fixture
def ring(tmp_path: Path) -> Iterator[MeshLab]:
    """The ring with a dialer at r1, host1 at r4 and host2 at r2 (used by some tests)."""
    mesh = MeshLab(tmp_path)
    try:
        mesh.build({"dialer": ["r1"], "host1": ["r4", "r5"], "host2": ["r2"]})
        mesh.start([(SERVICE, ["bulk-c"], ["bulk-h"])], IDENTITIES)
        yield mesh
    finally:
        mesh.destroy()


def _routers(mesh: MeshLab, *names: str) -> str:
    return ",".join(mesh.address(name) for name in names)


@pytest.mark.parametrize(
    "mib",
    [64, pytest.param(1024, marks=pytest.mark.skipif(not CI, reason="1 GiB runs with CI=true"))],
)
def test_a_middle_router_killed_under_a_transfer_loses_nothing(ring: MeshLab, mib: int) -> None:
    mesh = ring
    host = mesh.endpoint("host1", "host", "host1", SERVICE, _routers(mesh, "r4"))
    host.expect("bound")
    dialer = mesh.endpoint(
        "dialer", "dial", "dialer", SERVICE, _routers(mesh, "r1"), str(mib), "30", "sent"
    )
    dialer.expect("dialed")
    dialer.expect("third")
    before = mesh.path("r1")
    # Usually r1 -> r3 -> r4 or r1 -> r5 -> r4; on a loaded machine the links' measured
    # RTTs may make a 4-hop path the cheapest, which has a router to kill as well.
    assert before[0] == "r1" and before[-1] == "r4" and len(before) >= 3, before
    logged = mesh.log_size("r1")
    mesh.kill(before[1])  # a middle router: the stream must go round it
    dialer.expect("sent", timeout=600 if mib > 64 else 120)
    after = mesh.path("r1")  # the stream is still open (the dialer waits to send EOF)
    setup = mesh.setup_times("r1", logged)
    dialer.go()
    done = dialer.expect("done", timeout=120)
    echoed = host.expect("stream", timeout=60)
    print(
        f"\n{mib} MiB echoed through the ring in {done['seconds']:.1f} s; path before: "
        f"{' -> '.join(before)}, after killing {before[1]}: {' -> '.join(after)}; "
        f"resumes {done['resumes']}, longest read pause {done['pause']:.2f} s; "
        f"path setup at r1 after the loss (ms, from its log): {setup}"
    )
    assert done["error"] is None  # the application saw no error
    assert done["bytes"] == mib << 20
    assert echoed["error"] is None and echoed["received"] == mib << 20
    assert echoed["sha256"] == done["sent"]  # dialer -> host: every byte once, in order
    assert done["echoed"] == done["sent"]  # host -> dialer
    assert done["resumes"] == 1
    assert after[0] == "r1" and after[-1] == "r4" and before[1] not in after, after


@pytest.mark.parametrize("homes", [("r4",), ("r4", "r5")], ids=["one-router", "two-routers"])
def test_the_hosts_router_killed_while_another_host_is_up(
    ring: MeshLab, homes: tuple[str, ...]
) -> None:
    mesh = ring
    # host2 is a worse choice than host1 from r1 (an admin cost on its router), so only
    # the loss of host1's last router can send a dial to it.
    mesh.admin("cost", "r2", "50").expect("cost")
    host1 = mesh.endpoint("host1", "host", "host1", SERVICE, _routers(mesh, *homes), "3")
    host1.expect("bound")
    dialer = mesh.endpoint(
        "dialer", "dial", "dialer", SERVICE, _routers(mesh, "r1"), "64", "30", "third"
    )
    assert dialer.expect("dialed")["host"].endswith("/host1")
    dialer.expect("third")
    host2 = mesh.endpoint("host2", "host", "host2", SERVICE, _routers(mesh, "r2"))
    host2.expect("bound")
    before = mesh.path("r1")
    assert before[-1] in homes, before
    mesh.kill(before[-1])  # the router the host's end of the stream is linked to
    dialer.go()
    done = dialer.expect("done", timeout=120)
    print(
        f"\nhost1 on {', '.join(homes)}; path before: {' -> '.join(before)}, "
        f"{before[-1]} killed; the dialer saw: error {done['error']}, "
        f"{done['bytes'] >> 20} MiB echoed, resumes {done['resumes']}"
    )
    if len(homes) == 2:  # the same host session is still reachable: the stream moves
        assert done["error"] is None and done["bytes"] == 64 << 20
        assert done["echoed"] == done["sent"] and done["resumes"] == 1
        assert done["host"].endswith("/host1")
        assert host1.expect("stream")["sha256"] == done["sent"]
    else:  # a new host means a new stream: this one ends with an error, never cut short
        # The resume names host1's process, bound nowhere host2's router reaches.
        assert done["error"] == "instance_gone"
        assert done["bytes"] < 64 << 20
        # host1 is alive but unreachable: its end gives up after its resume deadline.
        assert host1.expect("stream")["error"] == "resume_timeout"
        again = dialer.expect("again")  # the application dials again: host2 answers
        assert again["host"].endswith("/host2") and again["echoed"] == "again"


def test_revocation_closes_a_stream_across_two_router_hops(ring: MeshLab) -> None:
    mesh = ring
    host = mesh.endpoint("host1", "host", "host1", SERVICE, _routers(mesh, "r4"))
    host.expect("bound")
    dialer = mesh.endpoint("dialer", "hold", "dialer", SERVICE, _routers(mesh, "r1"))
    dialer.expect("ready")
    path = mesh.path("r1")
    assert len(path) == 3 and path[0] == "r1" and path[-1] == "r4", path
    # The host's grant lives at r4: its RESET crosses r4 -> middle -> r1 to the dialer.
    disabled = mesh.admin("disable", "host1").expect("disabled")
    closed = dialer.expect("closed", timeout=30)
    print(
        f"\npath {' -> '.join(path)}: host1 disabled, the dialer's stream closed "
        f"{(closed['at'] - disabled['started']) * 1000:.0f} ms after the admin call "
        f"({(closed['at'] - disabled['done']) * 1000:.0f} ms after its answer)"
    )
    assert closed["code"] == "revoked", closed
