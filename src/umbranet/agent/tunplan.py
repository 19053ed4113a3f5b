"""Network mode's changes to the system: the TUN link, its addresses and routes, resolv.conf.

What `umbra up --tun` changes (Linux, as root), and nothing else:

- the TUN interface (``umbra0``), created by opening it; it is *not* persistent, so the
  kernel deletes it, with every address and route on it, when the agent's descriptor closes
  (a SIGKILL included);
- on it: the identity's overlay IPv4 (/32) and IPv6 (/128, ``nodad``), the MTU, and one
  route per peer address the identity may reach (``dev umbra0``, nothing else is routed);
- ``/etc/resolv.conf`` pointing at the DNS stub (as root mode does, and with its rules: kept
  search/options lines, rewritten in place, a symlink refused), unless DNS is turned off;
- on a subnet router or exit node (``--advertise-routes``, ``--advertise-exit-node``): kernel
  forwarding turned on (``net.ipv4.ip_forward``, ``net.ipv6.conf.all.forwarding``; the
  original values recorded and put back) and an nftables table ``inet umbranet_tun`` that
  masquerades what arrives on the TUN and leaves by another interface, so the LAN answers
  the router and needs no route back to the overlay (``--no-snat-subnet-routes``: not to
  the advertised prefixes, whose hosts then see each client's overlay address and must
  route the overlay range back via the router);
- on a client of an exit node (``--exit-node``): a routing table holding a default route
  via the TUN (its routes go with the link) and ``ip rule``s sending everything without the
  WireGuard socket's firewall mark there. The tunnel's own UDP carries the mark and so takes
  the main table: no routing loop. With ``--exit-node-allow-lan`` a rule before it lets the
  main table's non-default routes (the LAN) win; without, only the controller's address is
  kept out of the tunnel.

Crash safety: before anything changes, the plan (interface name, and the original and our
resolv.conf) is written to ``tunmode.json`` in the state directory; the interface index is
added once the interface exists; the forwarding values, the nftables table and each ip rule
are recorded before they are made. `uninstall` (``umbra down``, or the next ``umbra up``)
deletes the link only if that same interface (name and index) still exists, restores
resolv.conf only if it still holds what we wrote, puts a forwarding switch back only if it
still holds what we set, deletes our nftables table and rules, and refuses to act from
another network namespace than the one the changes were made in.
"""

from __future__ import annotations

import contextlib
import ipaddress
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
    "undo_routing",
    "forward_and_masquerade",
    "interface_index",
    "leftovers",
    "record",
    "route_through_exit",
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
    # sysctl path -> the value before we set "1" (subnet router / exit node)
    forwarding: dict[str, str] | None = None
    nft_table: str | None = None
    # each `ip rule add` argument list we ran (or are about to), to delete the same
    rules: list[list[str]] | None = None

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
    done.extend(undo_routing(plan))
    return done


def undo_routing(plan: TunPlan) -> list[str]:
    """Undo the routing parts of a plan: our ip rules, our nftables table, and each
    forwarding switch that still holds the "1" we wrote (otherwise someone changed it since)."""
    done: list[str] = []
    for argv in reversed(plan.rules or []):
        for _ in range(8):  # a crashed run may have added one twice; never loop unbounded
            if not run_command(["ip", argv[0], "rule", "del", *argv[1:]], check=False):
                break
            done.append(f"ip {argv[0]} rule {' '.join(argv[1:])}")
    if plan.nft_table is not None and run_command(
        ["nft", "delete", "table", *plan.nft_table.split()], check=False
    ):
        done.append(f"nftables table {plan.nft_table}")
    for path, original in (plan.forwarding or {}).items():
        with contextlib.suppress(OSError):
            if Path(path).read_text().strip() == "1" and original != "1":
                Path(path).write_text(original + "\n")
                done.append(f"{path} back to {original}")
    return done


FORWARDING = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")
NFT_TABLE = "inet umbranet_tun"


def forward_and_masquerade(
    state_dir: Path, plan: TunPlan, keep_source: Iterable[str] = ()
) -> TunPlan:
    """A subnet router or exit node: kernel forwarding on, and masquerade for traffic from
    the TUN leaving by another interface, except to the prefixes in `keep_source` (a LAN that
    routes the overlay range back to us sees each client's own overlay address). Recorded
    first; returns the new plan."""
    originals = {}
    for path in FORWARDING:
        with contextlib.suppress(OSError):
            originals[path] = Path(path).read_text().strip()
    plan = replace(plan, forwarding=originals, nft_table=NFT_TABLE)
    record(state_dir, plan)
    for path in originals:
        Path(path).write_text("1\n")
    family, name = NFT_TABLE.split()
    script = (
        f"table {family} {name} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f"{_unmasqueraded(plan.ifname, keep_source)}"
        f'    iifname "{plan.ifname}" oifname != "{plan.ifname}" masquerade\n'
        "  }\n"
        "}\n"
    )
    run_command(["nft", "-f", "-"], stdin=script)
    return plan


def _unmasqueraded(ifname: str, prefixes: Iterable[str]) -> str:
    """nftables lines that leave packets from the TUN to `prefixes` with their own source."""
    lines = ""
    networks = [ipaddress.ip_network(p, strict=False) for p in prefixes]
    for version, keyword in ((4, "ip"), (6, "ip6")):
        chosen = [str(n) for n in networks if n.version == version]
        if chosen:
            lines += f'    iifname "{ifname}" {keyword} daddr {{ {", ".join(chosen)} }} accept\n'
    return lines


def route_through_exit(
    state_dir: Path,
    plan: TunPlan,
    *,
    table: int,
    mark: int,
    priority: int,
    allow_lan: bool,
    exempt: list[str],
    ipv6: bool,
) -> TunPlan:
    """A client of an exit node: a default route via the TUN in ``table`` and the rules that
    send every unmarked packet there (module docstring). Recorded first."""
    rules: list[list[str]] = []
    for family in ("-4", "-6") if ipv6 else ("-4",):
        version = 6 if family == "-6" else 4
        for address in exempt:
            if (":" in address) == (version == 6):
                rules.append([family, "to", address, "lookup", "main", "priority", str(priority)])
        if allow_lan:
            rules.append(
                [family, "table", "main", "suppress_prefixlength", "0",
                 "priority", str(priority + 1)]
            )  # fmt: skip
        rules.append(
            [family, "not", "fwmark", hex(mark), "table", str(table),
             "priority", str(priority + 2)]
        )  # fmt: skip
    plan = replace(plan, rules=rules)
    record(state_dir, plan)
    for family in ("-4", "-6") if ipv6 else ("-4",):
        run_command(
            ["ip", family, "route", "replace", "default", "dev", plan.ifname, "table", str(table)]
        )
    for argv in rules:
        run_command(["ip", argv[0], "rule", "add", *argv[1:]])
    return plan


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
