"""Root mode's changes to the system: an nftables table, one route, and ``/etc/resolv.conf``.

What the agent installs (Linux, as root), and nothing else:

- ``table ip umbranet``: a nat ``output`` chain redirecting TCP to the proxy range to the
  agent's transparent listener on 127.0.0.1 and UDP for each (proxy address, intercept
  port) to its own agent socket (a map the agent refills as services come and go), and a
  filter ``output`` chain rejecting anything else sent to the range (ICMP port unreachable
  at once instead of silence).
  Only traffic to the range is matched; the table is ours alone, so removing it removes
  every rule we added and touches no one else's;
- ``ip route add <range> dev lo src 127.0.0.1``, because the kernel must route a connect to
  100.64.x.x before the nat hook rewrites it (without a route the app gets ENETUNREACH);
- ``/etc/resolv.conf`` pointing at the DNS stub, keeping its search and options lines; the
  old nameservers become the stub's upstreams. It is rewritten in place, so a bind mount
  over it survives (``ip netns exec`` mounts ``/etc/netns/<ns>/resolv.conf`` there);
- or, when the file is systemd-resolved's stub, no edit at all: a dummy link whose
  link-scoped DNS server is the stub, for the ``~<suffix>`` routing domain (`resolved`).
  Any other symlink is refused.

Before touching anything, the plan (and the original resolv.conf) is written to
``rootmode.json`` in the state directory, so `uninstall` can undo a crashed agent's changes
(``umbra down``, or the next ``umbra up``). `uninstall` only removes what is still ours: the
resolv.conf is restored only if it still holds what we wrote, and it refuses to run in
another network namespace than the one the changes were made in (the plan file's rules are
network mode's too: `planfile`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from umbranet.agent import planfile, resolved
from umbranet.agent.config import ConfigError
from umbranet.agent.planfile import (
    current_netns,
    require_root,
    restore_in_place,
    run_command,
    write_in_place,
)

__all__ = [
    "STATE_FILE",
    "TABLE",
    "Installed",
    "current_netns",
    "install",
    "leftovers",
    "nft_ruleset",
    "read_upstreams",
    "require_root",
    "resolv_conf_for",
    "set_resolved_domains",
    "run_command",
    "set_udp_redirects",
    "udp_map_script",
    "uninstall",
]

STATE_FILE = "rootmode.json"
TABLE = "umbranet"
_MARK = "# written by the umbra agent (root mode); restored by `umbra down`"


@dataclass(frozen=True, slots=True)
class Installed:
    """What one agent changed (the content of ``rootmode.json``)."""

    netns: int
    network: str
    tcp_port: int
    route: str
    resolv_path: str
    resolv_original: str
    resolv_ours: str
    # With systemd-resolved: the link carrying our DNS scope (resolv.conf fields are empty).
    dns_link: str = ""


def nft_ruleset(network: str, tcp_port: int) -> str:
    """The table the agent loads (``nft -f``): redirect TCP to the range and UDP to the
    (proxy address, port) pairs in the ``udp_ports`` map, reject the rest."""
    return (
        f"table ip {TABLE} {{\n"
        "  set udp_keys {\n"
        "    type ipv4_addr . inet_service\n"
        "  }\n"
        "  map udp_ports {\n"
        "    type ipv4_addr . inet_service : inet_service\n"
        "  }\n"
        "  chain nat_output {\n"
        "    type nat hook output priority -100; policy accept;\n"
        f"    ip daddr {network} meta l4proto tcp redirect to :{tcp_port}\n"
        f"    ip daddr {network} ip daddr . udp dport @udp_keys"
        " redirect to :ip daddr . udp dport map @udp_ports\n"
        "  }\n"
        "  chain filter_output {\n"
        "    type filter hook output priority 0; policy accept;\n"
        f"    ip daddr {network} reject\n"
        "  }\n"
        "}\n"
    )


def udp_map_script(entries: Mapping[tuple[str, int], int]) -> str:
    """Replace the UDP redirects at once: (proxy address, port) -> agent's loopback port."""
    lines = [f"flush set ip {TABLE} udp_keys", f"flush map ip {TABLE} udp_ports"]
    if entries:
        keys = ", ".join(f"{a} . {p}" for a, p in sorted(entries))
        pairs = ", ".join(f"{a} . {p} : {local}" for (a, p), local in sorted(entries.items()))
        lines.append(f"add element ip {TABLE} udp_keys {{ {keys} }}")
        lines.append(f"add element ip {TABLE} udp_ports {{ {pairs} }}")
    return "\n".join(lines) + "\n"


def set_udp_redirects(entries: Mapping[tuple[str, int], int]) -> None:
    """Load `udp_map_script` into our table (which `install` created)."""
    run_command(["nft", "-f", "-"], stdin=udp_map_script(entries))


def resolv_conf_for(original: str, stub_address: str) -> str:
    """The replacement resolv.conf: our stub first and alone, other settings kept."""
    kept = [
        line
        for line in original.splitlines()
        if line.split()[:1] != ["nameserver"] and not line.startswith(_MARK)
    ]
    return "\n".join([_MARK, f"nameserver {stub_address}", *kept]) + "\n"


def read_upstreams(text: str, exclude: str) -> list[tuple[str, int]]:
    """The IPv4 nameservers of a resolv.conf, minus our own stub, as (address, 53)."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver" and fields[1] != exclude:
            with contextlib.suppress(ValueError):
                found.append((str(ipaddress.IPv4Address(fields[1])), 53))
    return found


def install(
    state_dir: Path,
    network: str,
    tcp_port: int,
    stub_address: str,
    resolv_path: Path,
    *,
    stub_port: int = 53,
    suffix: str = "umbra",
) -> Installed:
    """Undo leftovers, check, record the plan, then change the system; undone on failure."""
    uninstall(state_dir)
    with_resolved = resolved.manages(resolv_path)
    if with_resolved:
        _check_link_free(resolved.LINK)
    _check_route_free(network)
    original = "" if with_resolved else resolv_path.read_text()
    plan = Installed(
        netns=current_netns(),
        network=network,
        tcp_port=tcp_port,
        route=f"{network} dev lo src 127.0.0.1",
        resolv_path="" if with_resolved else str(resolv_path),
        resolv_original=original,
        resolv_ours="" if with_resolved else resolv_conf_for(original, stub_address),
        dns_link=resolved.LINK if with_resolved else "",
    )
    planfile.record(state_dir, STATE_FILE, plan)
    try:
        run_command(["nft", "-f", "-"], stdin=nft_ruleset(network, tcp_port))
        run_command(["ip", "route", "add", *plan.route.split()])
        if with_resolved:
            # The range's network address is never a proxy address (`proxyaddr`): it only
            # makes the link one resolved will give a DNS scope.
            link_address = str(ipaddress.IPv4Network(network).network_address)
            domains = resolved.routing_domains(suffix, ())
            _add_link(plan.dns_link)
            for argv in resolved.setup_commands(
                plan.dns_link, link_address, stub_address, stub_port, domains
            ):
                run_command(argv)
        else:
            write_in_place(resolv_path, plan.resolv_ours)
    except BaseException:
        uninstall(state_dir)
        raise
    return plan


def set_resolved_domains(link: str, domains: list[str]) -> None:
    """Replace the routing domains on our resolved link (the names the stub answers)."""
    run_command(resolved.domains_command(link, domains))


def leftovers(state_dir: Path) -> Installed | None:
    """The changes recorded in `state_dir` and not yet undone, if any."""
    return planfile.leftovers(state_dir, STATE_FILE, Installed)


def uninstall(state_dir: Path) -> list[str]:
    """Undo what `state_dir` records (idempotent); returns what was removed or restored."""
    return planfile.undo(state_dir, STATE_FILE, Installed, "root-mode", _undo)


# -- internals ----------------------------------------------------------------------------------


def _add_link(name: str) -> None:
    """Create our resolved link with the first kind this kernel has."""
    *first, last = resolved.LINK_KINDS
    for kind in first:
        if run_command(resolved.add_link_command(name, kind), check=False):
            return
    run_command(resolved.add_link_command(name, last))


def _check_link_free(name: str) -> None:
    """Refuse when a link of our name exists that no plan of ours records: it is not ours
    to configure or delete."""
    if run_command(["ip", "link", "show", "dev", name], check=False):
        raise ConfigError(
            "link_in_use", f"a link named {name} exists; remove it (`ip link del {name}`) first"
        )


def _undo(plan: Installed) -> list[str]:
    done = []
    if run_command(["nft", "delete", "table", "ip", TABLE], check=False):
        done.append(f"nft table ip {TABLE}")
    if run_command(["ip", "route", "del", *plan.route.split()], check=False):
        done.append(f"route {plan.route}")
    if plan.dns_link:
        revert, delete = resolved.undo_commands(plan.dns_link)
        if run_command(revert, check=False):
            done.append(f"resolved DNS on {plan.dns_link} reverted")
        if run_command(delete, check=False):
            done.append(f"link {plan.dns_link}")
    elif restore_in_place(plan.resolv_path, plan.resolv_ours, plan.resolv_original):
        done.append(f"{plan.resolv_path} restored")
    return done


def _check_route_free(network: str) -> None:
    """Refuse a range another route already covers (a VPN, a CGNAT link): we would steal it."""
    ours = ipaddress.IPv4Network(network)
    listing = _run_output(["ip", "-j", "-4", "route", "show", "table", "all"])
    for route in json.loads(listing or "[]"):
        dst = route.get("dst", "")
        if dst == "default" or route.get("type") in ("local", "broadcast"):
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.IPv4Network(dst, strict=False).overlaps(ours):
                raise ConfigError(
                    "range_in_use", f"the route {dst} overlaps the proxy range {network}"
                )


def _run_output(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError("system_change_failed", f"{' '.join(argv[:3])} failed")
    return proc.stdout
