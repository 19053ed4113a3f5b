"""A NAT lab in network namespaces: an "internet", STUN servers, and sites behind NATs.

    site 1 host ── NAT 1 ─┐
    site 2 host ──────────┼── wan (forwards; STUN at 198.18.0.1:3478 and 198.18.0.2:3478)
    site 3 host ── NAT 3 ─┘

Site kinds:
- ``open``: the host has a public address (198.18.N.2) straight on the wan.
- ``easy``: endpoint-independent mapping: nftables ``masquerade`` (the kernel keeps the
  source port when it is free, so one socket maps to one public port whatever the
  destination); inbound packets pass only as replies of flows that went out (conntrack), i.e.
  address-and-port-dependent filtering, as most home routers do.
- ``hard``: address-and-port-dependent mapping: ``masquerade fully-random``, a new random
  public port for every destination, so the port a STUN server sees is useless to a peer.
- ``blocked``: an easy NAT whose firewall drops all UDP in both directions.
- ``hairpin``: two hosts (198.19.N.2 and 198.19.N+100.2) behind one easy NAT.

Every NAT drops unsolicited inbound UDP in its ``input`` hook, before conntrack confirms an
entry: otherwise a peer's early probe to a port not yet opened would leave a conntrack entry
that makes the next outbound flow to that peer take another public port (a real Linux
router behaves so; here it would make hole punching flaky rather than deterministic).

Public addresses are 198.18.0.0/16, private LANs 198.19.0.0/16 (the benchmarking range, as
every namespace test here). Namespaces are made by `netns_helper.Lab` and always deleted.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.netns_helper import Lab, sh

__all__ = ["STUN_SERVERS", "NatLab", "Site"]

STUN_SERVERS = ("198.18.0.1:3478", "198.18.0.2:3478")
KINDS = ("open", "easy", "hard", "blocked", "hairpin")
PEER_SCRIPT = str(Path(__file__).with_name("nat_peer.py"))


@dataclass
class Site:
    index: int
    kind: str
    hosts: list[str] = field(default_factory=list)  # namespaces of the hosts
    nat: str | None = None  # namespace of the NAT, if any
    public: str = ""  # the site's public address

    def lan_address(self, host: int = 0) -> str:
        if self.kind == "open":
            return self.public
        return f"198.19.{self.index + 100 * host}.2"


class NatLab:
    """`async`-free builder: ``lab = NatLab(Lab(logs)); site = lab.site("easy")``."""

    def __init__(self, lab: Lab, *, stun: bool = True) -> None:
        """With `stun`, a lab process answers STUN at `STUN_SERVERS`; without, the test
        runs routers with ``--stun-listen`` there."""
        self.lab = lab
        self.wan = lab.namespace("wan")
        self.sites: list[Site] = []
        sh(["ip", "netns", "exec", self.wan, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for server in STUN_SERVERS:
            host = server.partition(":")[0]
            sh(["ip", "-n", self.wan, "addr", "add", f"{host}/32", "dev", "lo"])
        if stun:
            lab.spawn(self.wan, "stun", [sys.executable, PEER_SCRIPT, "stun", *STUN_SERVERS])

    def _veth(self, left: str, left_cidr: str, right: str, right_cidr: str) -> tuple[str, str]:
        """A veth pair; returns the interface names (left, right)."""
        tag = secrets.token_hex(3)
        a, b = f"nl{tag}a", f"nl{tag}b"
        sh(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
        sh(["ip", "link", "set", a, "netns", left])
        sh(["ip", "link", "set", b, "netns", right])
        for ns, dev, cidr in ((left, a, left_cidr), (right, b, right_cidr)):
            sh(["ip", "-n", ns, "addr", "add", cidr, "dev", dev])
            sh(["ip", "-n", ns, "link", "set", dev, "up"])
        return a, b

    def site(self, kind: str) -> Site:
        if kind not in KINDS:
            raise ValueError(kind)
        index = len(self.sites) + 1
        site = Site(index, kind, public=f"198.18.{index}.2")
        self.sites.append(site)
        if kind == "open":
            host = self.lab.namespace(f"h{index}")
            self._veth(self.wan, f"198.18.{index}.1/24", host, f"198.18.{index}.2/24")
            sh(["ip", "-n", host, "route", "add", "default", "via", f"198.18.{index}.1"])
            site.hosts.append(host)
            return site
        nat = site.nat = self.lab.namespace(f"n{index}")
        _, wan_if = self._veth(self.wan, f"198.18.{index}.1/24", nat, f"198.18.{index}.2/24")
        sh(["ip", "-n", nat, "route", "add", "default", "via", f"198.18.{index}.1"])
        sh(["ip", "netns", "exec", nat, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for lan in (0, 1) if kind == "hairpin" else (0,):
            net = index + 100 * lan
            host = self.lab.namespace(f"h{net}")
            self._veth(nat, f"198.19.{net}.1/24", host, f"198.19.{net}.2/24")
            sh(["ip", "-n", host, "route", "add", "default", "via", f"198.19.{net}.1"])
            site.hosts.append(host)
        masquerade = "masquerade fully-random" if kind == "hard" else "masquerade"
        block = "meta l4proto udp drop;" if kind == "blocked" else ""
        rules = f"""
table ip natlab {{
  chain lab_postrouting {{ type nat hook postrouting priority srcnat;
    oifname "{wan_if}" {masquerade}; }}
  chain lab_forward {{ type filter hook forward priority filter; policy accept; {block} }}
  chain lab_input {{ type filter hook input priority filter; policy accept;
    iifname "{wan_if}" meta l4proto udp ct state new drop; }}
}}
"""
        self._nft(nat, rules)
        return site

    def _nft(self, ns: str, rules: str) -> None:
        path = self.lab.logs / f"nft-{ns}.conf"
        path.write_text(rules)
        sh(["ip", "netns", "exec", ns, "nft", "-f", str(path)])

    def flush_mappings(self, site: Site) -> None:
        """Forget every NAT mapping of `site` (conntrack entries), as a NAT reboot would
        (needs the `conntrack` tool, Debian package conntrack)."""
        if site.nat is not None:
            sh(["ip", "netns", "exec", site.nat, "conntrack", "-F"], check=False)

    def block_udp(self, one: Site, other: Site) -> None:
        """Drop every UDP datagram between the two sites' public addresses on the wan: the
        direct path between them dies while both still reach the routers and STUN."""
        a, b = one.public, other.public
        self._nft(
            self.wan,
            f"""
table ip natlab_block {{
  chain forward {{ type filter hook forward priority filter - 1; policy accept;
    ip saddr {a} ip daddr {b} meta l4proto udp drop;
    ip saddr {b} ip daddr {a} meta l4proto udp drop; }}
}}
""",
        )

    def unblock_udp(self) -> None:
        """Undo `block_udp`."""
        sh(["ip", "netns", "exec", self.wan, "nft", "delete", "table", "ip", "natlab_block"])
