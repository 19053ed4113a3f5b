"""Network mode's changes to the system: the TUN link, its addresses and routes, resolv.conf.

What `umbra up --tun` changes (Linux, as root), and nothing else:

- the TUN interface (``umbra0``), created by opening it; it is *not* persistent, so the
  kernel deletes it, with every address and route on it, when the agent's descriptor closes
  (a SIGKILL included);
- on it: the identity's overlay IPv4 (/32) and IPv6 (/128, ``nodad``), the MTU, and one
  route per peer address the identity may reach (``dev umbra0``, nothing else is routed);
- ``/etc/resolv.conf`` pointing at the DNS stub (as root mode does, and with its rules: kept
  search/options lines, rewritten in place, a symlink refused), unless DNS is turned off.

Crash safety: before anything changes, the plan (interface name, and the original and our
resolv.conf) is written to ``tunmode.json`` in the state directory; the interface index is
added once the interface exists. `uninstall` (``umbra down``, or the next ``umbra up``)
deletes the link only if that same interface (name and index) still exists, restores
resolv.conf only if it still holds what we wrote, and refuses to act from another network
namespace than the one the changes were made in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from umbranet.agent import planfile
from umbranet.agent.config import ConfigError
from umbranet.agent.planfile import current_netns, restore_in_place, run_command, write_in_place
from umbranet.agent.redirect import resolv_conf_for

__all__ = [
    "STATE_FILE",
    "TunPlan",
    "add_addresses",
    "interface_index",
    "leftovers",
    "record",
    "set_routes",
    "uninstall",
    "write_resolv",
]

STATE_FILE = "tunmode.json"


@dataclass(frozen=True, slots=True)
class TunPlan:
    """What one agent changed (the content of ``tunmode.json``)."""

    netns: int
    ifname: str
    ifindex: int | None = None
    resolv_path: str | None = None
    resolv_original: str | None = None
    resolv_ours: str | None = None

    @classmethod
    def new(cls, ifname: str, resolv_path: Path | None, stub_address: str) -> TunPlan:
        """The plan before anything changed: what resolv.conf holds and what we will write."""
        if resolv_path is None:
            return cls(current_netns(), ifname)
        _check_resolv(resolv_path)
        original = resolv_path.read_text()
        ours = resolv_conf_for(original, stub_address)
        return cls(current_netns(), ifname, None, str(resolv_path), original, ours)

    def with_index(self, ifindex: int) -> TunPlan:
        return replace(self, ifindex=ifindex)


def record(state_dir: Path, plan: TunPlan) -> None:
    """Write the plan atomically (before the change it describes)."""
    planfile.record(state_dir, STATE_FILE, plan)


def leftovers(state_dir: Path) -> TunPlan | None:
    """The changes recorded in `state_dir` and not yet undone, if any."""
    return planfile.leftovers(state_dir, STATE_FILE, TunPlan)


def uninstall(state_dir: Path) -> list[str]:
    """Undo what `state_dir` records (idempotent); returns what was removed or restored."""
    return planfile.undo(state_dir, STATE_FILE, TunPlan, "network-mode", _undo)


def _undo(plan: TunPlan) -> list[str]:
    done = []
    ours = plan.ifindex is not None and interface_index(plan.ifname) == plan.ifindex
    if ours and run_command(["ip", "link", "delete", "dev", plan.ifname], check=False):
        done.append(f"link {plan.ifname}")
    if restore_in_place(plan.resolv_path, plan.resolv_ours, plan.resolv_original):
        done.append(f"{plan.resolv_path} restored")
    return done


def interface_index(ifname: str) -> int | None:
    """The kernel's index of an interface, or None if there is none of that name."""
    try:
        return int(Path(f"/sys/class/net/{ifname}/ifindex").read_text())
    except (OSError, ValueError):
        return None


def add_addresses(ifname: str, ipv4: str, ipv6: str, mtu: int) -> bool:
    """The identity's overlay addresses on the interface, then the interface up. Returns
    whether the IPv6 address could be added: a host with IPv6 turned off still gets IPv4."""
    run_command(["ip", "link", "set", "dev", ifname, "mtu", str(mtu)])
    run_command(["ip", "-4", "addr", "add", f"{ipv4}/32", "dev", ifname])
    has_ipv6 = run_command(
        ["ip", "-6", "addr", "add", f"{ipv6}/128", "dev", ifname, "nodad"], check=False
    )
    run_command(["ip", "link", "set", "dev", ifname, "up"])
    return has_ipv6


def set_routes(ifname: str, current: set[str], wanted: Iterable[str]) -> set[str]:
    """Make the routes via the interface exactly `wanted` (host prefixes); returns them.

    A route that cannot be added (another route holds that prefix) is left out and the
    result says so by not containing it; the caller counts it.
    """
    target = set(wanted)
    for prefix in sorted(current - target):
        family = "-6" if ":" in prefix else "-4"
        run_command(["ip", family, "route", "del", prefix, "dev", ifname], check=False)
    done = current & target
    for prefix in sorted(target - current):
        family = "-6" if ":" in prefix else "-4"
        if run_command(["ip", family, "route", "add", prefix, "dev", ifname], check=False):
            done.add(prefix)
    return done


def write_resolv(plan: TunPlan) -> None:
    """Point resolv.conf at the stub (the plan recording the original was written first)."""
    if plan.resolv_path is not None and plan.resolv_ours is not None:
        write_in_place(Path(plan.resolv_path), plan.resolv_ours)


# -- internals ----------------------------------------------------------------------------------


def _check_resolv(path: Path) -> None:
    if path.is_symlink():
        raise ConfigError(
            "resolv_conf_managed",
            f"{path} is a symlink to {os.path.realpath(path)}; network mode will not edit it "
            "(use --no-dns)",
        )
    if not path.is_file():
        raise ConfigError("no_resolv_conf", f"{path} does not exist")
