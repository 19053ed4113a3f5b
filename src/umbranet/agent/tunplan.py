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

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from umbranet.agent.config import ConfigError
from umbranet.agent.redirect import current_netns, require_root, resolv_conf_for, run_command

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
    path = state_dir / STATE_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(plan), indent=2) + "\n")
    os.replace(temporary, path)


def leftovers(state_dir: Path) -> TunPlan | None:
    """The changes recorded in `state_dir` and not yet undone, if any."""
    try:
        return TunPlan(**json.loads((state_dir / STATE_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError("bad_state", f"{state_dir / STATE_FILE} is unreadable: {exc}") from None


def uninstall(state_dir: Path) -> list[str]:
    """Undo what `state_dir` records (idempotent); returns what was removed or restored."""
    plan = leftovers(state_dir)
    if plan is None:
        return []
    if plan.netns != current_netns():
        raise ConfigError(
            "wrong_namespace",
            "the network-mode changes were made in another network namespace; run this there",
        )
    require_root()
    done = []
    ours = plan.ifindex is not None and interface_index(plan.ifname) == plan.ifindex
    if ours and run_command(["ip", "link", "delete", "dev", plan.ifname], check=False):
        done.append(f"link {plan.ifname}")
    if plan.resolv_path is not None and plan.resolv_original is not None:
        resolv = Path(plan.resolv_path)
        with contextlib.suppress(OSError):
            if resolv.read_text() == plan.resolv_ours:
                _write_in_place(resolv, plan.resolv_original)
                done.append(f"{resolv} restored")
    (state_dir / STATE_FILE).unlink(missing_ok=True)
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
        _write_in_place(Path(plan.resolv_path), plan.resolv_ours)


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


def _write_in_place(path: Path, text: str) -> None:
    """Rewrite in place: the file keeps its inode, mode and any bind mount over it."""
    with open(path, "w") as handle:
        handle.write(text)
