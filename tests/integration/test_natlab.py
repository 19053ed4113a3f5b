"""The NAT matrix: connectivity checks between two peers over real sockets behind simulated
NATs (`natlab.py`), asserting which pairs find a direct path.

Expected, and why:
- open-open, easy-open, easy-easy: direct (hole punching through endpoint-independent
  mappings; both sides probe at once so each NAT sees an outbound flow first);
- hard-open: direct, through the peer-reflexive candidate (the open side answers the hard
  side's probe and then probes the address it came from);
- hairpin (two hosts behind one NAT): direct, over their host candidates;
- hard-hard, hard-easy: not direct (a fresh random port per destination, which the other
  side never learns, and the other side's filter drops unsolicited packets);
- blocked-open: not direct (no UDP at all).
Also checked per site: what address discovery classifies the NAT as.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.natlab import PEER_SCRIPT, NatLab
from tests.integration.netns_helper import Lab
from umbranet.proto.wireguard.crypto import public_key

SRC = str(Path(__file__).resolve().parents[2] / "src")
REPO = str(Path(__file__).resolve().parents[2])


def _missing() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "the NAT lab needs Linux and root (network namespaces, nftables)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package {package})"
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
]


@pytest.fixture
def natlab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NatLab]:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([SRC, REPO]))
    lab = Lab(tmp_path)
    try:
        yield NatLab(lab)
    finally:
        lab.destroy()


def run_pair(
    natlab: NatLab, tmp_path: Path, a: str, b: str, *, a_host: int = 0, b_host: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both peers at once; their JSON results."""
    site_a = natlab.site(a)
    site_b = site_a if b == "same" else natlab.site(b)
    rng = random.Random(f"{a}-{b}")
    keys = [rng.randbytes(32), rng.randbytes(32)]
    pubs = [public_key(k).hex() for k in keys]
    signalling = tmp_path / "signal"
    signalling.mkdir()
    procs = []
    for i, (site, host) in enumerate(((site_a, a_host), (site_b, b_host))):
        argv = natlab.lab.argv(site.hosts[host], [
            sys.executable, PEER_SCRIPT, "peer", "--key", keys[i].hex(), "--peer-key", pubs[1 - i],
            "--dir", str(signalling), "--name", f"p{i}", "--peer-name", f"p{1 - i}",
        ])  # fmt: skip
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results[0], results[1]


@pytest.mark.parametrize(
    ("a", "b", "direct"),
    [
        ("open", "open", True),
        ("easy", "open", True),
        ("easy", "easy", True),
        ("hard", "open", True),
        ("hard", "hard", False),
        ("hard", "easy", False),
        ("blocked", "open", False),
    ],
)
def test_matrix(natlab: NatLab, tmp_path: Path, a: str, b: str, direct: bool) -> None:
    ra, rb = run_pair(natlab, tmp_path, a, b)
    expected_mapping = {
        "open": "no-nat",
        "easy": "endpoint-independent",
        "hard": "endpoint-dependent",
        "blocked": "udp-blocked",
    }
    assert ra["mapping"] == expected_mapping[a], ra
    assert rb["mapping"] == expected_mapping[b], rb
    if direct:
        assert ra["path"] and rb["path"], (ra, rb)
        assert not ra["failed"] and not rb["failed"]
    else:
        assert ra["path"] is None and rb["path"] is None, (ra, rb)
        assert ra["failed"] == ["no_candidate_answered"], ra
        assert rb["failed"] == ["no_candidate_answered"], rb


def test_two_peers_behind_one_nat_go_direct_over_host_candidates(
    natlab: NatLab, tmp_path: Path
) -> None:
    ra, rb = run_pair(natlab, tmp_path, "hairpin", "same", a_host=0, b_host=1)
    assert ra["path"] and rb["path"], (ra, rb)
    assert ra["selected"][-1]["kind"] == "host" and rb["selected"][-1]["kind"] == "host"
    assert ra["path"][0].startswith("198.19.") and rb["path"][0].startswith("198.19.")
