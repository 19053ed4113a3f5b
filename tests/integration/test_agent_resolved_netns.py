"""The resolved path's real `ip` and `nft` commands, in a fresh network namespace.

systemd-resolved cannot run here (it would take over the host's resolv.conf and needs
D-Bus), so `resolvectl` is a stand-in script on PATH that records its arguments; everything
else is real: the nft table, the route, the dummy link with its address, up, and all of it
gone after `uninstall`. The unit tests check the exact argv lists; this one checks the kernel
accepts them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import umbranet


def _missing() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs Linux and root (a network namespace, nftables, a dummy link)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package {package})"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))

SCRIPT = """
import json, subprocess, sys
from pathlib import Path
from umbranet.agent import redirect

root, state, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
plan = redirect.install(state, "100.64.0.0/10", 41000, "127.0.0.153", root / "etc/resolv.conf")
def show(*argv):
    return json.loads(subprocess.run(argv, capture_output=True, text=True).stdout or "[]")
during = {
    "link": show("ip", "-j", "addr", "show", "dev", "umbra-dns"),
    "route": show("ip", "-j", "route", "show", "100.64.0.0/10"),
    "table": subprocess.run(["nft", "list", "table", "ip", "umbranet"],
                            capture_output=True).returncode,
    "resolv": (root / "etc/resolv.conf").is_symlink(),
}
removed = redirect.uninstall(state)
after = {
    "link": subprocess.run(["ip", "link", "show", "dev", "umbra-dns"],
                           capture_output=True).returncode,
    "route": show("ip", "-j", "route", "show", "100.64.0.0/10"),
    "table": subprocess.run(["nft", "list", "table", "ip", "umbranet"],
                            capture_output=True).returncode,
}
out.write_text(json.dumps({"plan": plan.dns_link, "during": during, "after": after,
                           "removed": removed}))
"""


def test_the_dummy_link_route_and_table_exist_while_installed_and_are_gone_after(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "run/systemd/resolve").mkdir(parents=True)
    (root / "run/systemd/resolve/stub-resolv.conf").write_text("nameserver 127.0.0.53\n")
    (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "resolvectl.log"
    fake = bin_dir / "resolvectl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    out = tmp_path / "out.json"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    source = str(Path(umbranet.__file__).resolve().parents[1])  # the package under test
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    args = (root, state, out)
    subprocess.run(
        ["unshare", "--net", sys.executable, "-c", textwrap.dedent(SCRIPT), *map(str, args)],
        env=env,
        check=True,
        timeout=60,
    )
    result = json.loads(out.read_text())
    assert result["plan"] == "umbra-dns"
    (link,) = result["during"]["link"]
    assert {"UP", "LOWER_UP"} <= set(link["flags"])  # resolved wants a carrier too
    ipv4 = [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"]
    assert ipv4 == [("100.64.0.0", 32)]
    assert [r["dev"] for r in result["during"]["route"]] == ["lo"]
    assert result["during"]["table"] == 0 and result["during"]["resolv"] is True
    assert result["after"] == {"link": 1, "route": [], "table": 1}
    assert calls.read_text().splitlines() == [
        "dns umbra-dns 127.0.0.153",
        "domain umbra-dns ~umbra",
        "default-route umbra-dns false",
        "llmnr umbra-dns no",
        "mdns umbra-dns no",
        "dnssec umbra-dns no",
        "dnsovertls umbra-dns no",
        "revert umbra-dns",
    ]
    assert "link umbra-dns" in result["removed"]
