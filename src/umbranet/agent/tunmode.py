"""Network mode (``umbra up --tun``, Linux, root): an overlay address and a WireGuard data plane.

`TunMode` is what the agent adds for network mode. It binds one UDP socket (the WireGuard
port, published to the controller so allowed peers learn it), and on the first refresh that
brings the identity's overlay addresses it creates the TUN interface (``umbra0``), puts the
addresses on it and starts the WireGuard device (`proto.wireguard.Device`, keyed by the
identity's own X25519 Noise key) with its driver. Every refresh then follows the filtered
view from the controller:

- a peer appears in the device (its key, endpoint and overlay addresses as allowed IPs) and
  gets a route only while the view lists it, so a peer policy does not let us talk to is
  neither keyed nor routed, and a withdrawn one is forgotten with its sessions;
- each peer's ``reach`` becomes its grant in the receiver's packet filter
  (`proto.wireguard.flowfilter`): what it may open towards us; everything else it sends is
  dropped and counted unless it answers a flow we started;
- ``<peer>.<suffix>`` (``alice-laptop.umbra``) and our own name resolve to overlay IPv4
  addresses in the DNS stub, which resolv.conf points at while we run.

Routes: with ``--advertise-routes``/``--advertise-exit-node`` the routes are announced to
the controller and the kernel forwards and masquerades what peers may send there; the routes
peers offer us (``routes`` in the view, `tunroutes`) become their allowed IPs and kernel
routes, and with ``--exit-node NAME`` everything else goes to that peer.

Paths: each peer's datagrams go direct (UDP to the endpoint in the view) or through the
relay: a link to our home router (the fastest that answers, `aio.wg_relay`; when it drops,
`keep_relay` moves it to the next within a second) over which the view's per-peer relay
ticket is presented. The driver's path set starts a
peer relayed at once and moves it to direct when an authenticated exchange proves the
direct path, back to the relay when direct goes silent (`proto.paths`); a peer with no
endpoint is reached through the relay alone.

With ``listen_host="::"`` the WireGuard socket is dual-stack (`_bind_udp`), so IPv6
endpoints work; the default is still IPv4.

System changes go through `tunplan` (plan first, then the change; `umbra down` undoes).

NAT traversal (`agent.nat_traversal`, docs/nat.md): STUN on the WireGuard port, candidates
through the controller, probes whose proven pairs join the peer's path set as `punched`
paths, and a TURN relay when the network has one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import socket
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from umbranet.agent import tunplan
from umbranet.agent.config import ConfigError, TunSettings
from umbranet.agent.dns_stub import DnsStub
from umbranet.agent.nat_traversal import NatTraversal
from umbranet.agent.redirect import read_upstreams, require_root
from umbranet.agent.stats import Counters
from umbranet.agent.tunroutes import choose_routes
from umbranet.aio.tun import Tun
from umbranet.aio.wg_driver import WireGuardDriver
from umbranet.aio.wg_relay import RelayLink
from umbranet.client.controller import ControllerClient
from umbranet.pki import IdentityFile
from umbranet.proto.paths import Path as WgPath
from umbranet.proto.paths import PathKind, PathSet, relay_address
from umbranet.proto.wireguard import Device, Event, PeerSilent
from umbranet.proto.wireguard.flowfilter import FlowFilter, parse_grant

__all__ = ["SOCKET_BUFFER", "PeerEntry", "TunMode", "enlarge_buffers", "parse_peers"]

log = logging.getLogger("umbranet.agent")

# Relay tickets live 10 minutes; showing a fresh one every 2 keeps the router's allowance
# ahead of expiry with room for failed refreshes.
_REPRESENT_AFTER = 120.0
# A relay link is made to the first of this many routers (fastest first) that answers; when
# none does, the next try waits 2 s, doubling up to 30 s.
_RELAY_CANDIDATES = 3
_RELAY_RETRY_FIRST, _RELAY_RETRY_MAX = 2.0, 30.0
# wireguard-go asks for 7 MiB each way too; the data plane's bursts need it (`enlarge_buffers`)
SOCKET_BUFFER = 7 << 20
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """One peer of the view, as network mode uses it."""

    name: str
    key: bytes
    ipv4: str
    ipv6: str | None
    endpoint: tuple[str, int] | None
    reach: tuple[str, ...]
    routes: tuple[str, ...] = ()
    relay_ticket: str | None = None

    def prefixes(self) -> list[str]:
        return [f"{self.ipv4}/32", *([f"{self.ipv6}/128"] if self.ipv6 else [])]


def parse_peers(view: Mapping[str, Any], counters: Counters) -> dict[bytes, PeerEntry]:
    """The usable peers of a ``/v1/view`` answer, by public key; the rest are counted
    (``tun_peer_no_key``, ``tun_peer_no_address``, ``tun_peer_bad_endpoint``)."""
    peers: dict[bytes, PeerEntry] = {}
    for item in view.get("peers", []):
        try:
            key = base64.b64decode(item.get("noise_public_key") or "", validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            counters.add("tun_peer_no_key")
            continue
        if not item.get("ipv4"):
            counters.add("tun_peer_no_address")
            continue
        endpoint = _endpoint(item.get("endpoint"))
        if item.get("endpoint") and endpoint is None:
            counters.add("tun_peer_bad_endpoint")
        reach = tuple(str(r) for r in item.get("reach", []))
        routes = tuple(str(r) for r in item.get("routes", []))
        ticket = item.get("relay_ticket")
        peers[key] = PeerEntry(
            str(item["name"]),
            key,
            item["ipv4"],
            item.get("ipv6"),
            endpoint,
            reach,
            routes,
            ticket if isinstance(ticket, str) and ticket else None,
        )
    return peers


class TunMode:
    """``await prepare()`` binds the UDP port; ``await apply(ipv4, ipv6, view)`` installs on
    first use and follows the view after; ``close()`` undoes everything."""

    def __init__(
        self,
        settings: TunSettings,
        state_dir: Path,
        identity: IdentityFile,
        counters: Counters,
    ) -> None:
        self.settings = settings
        self._state_dir = state_dir
        self._identity = identity
        self._counters = counters
        self.sock: socket.socket | None = None
        self.tun: Tun | None = None
        self.driver: WireGuardDriver | None = None
        self.device: Device | None = None
        self.nat: NatTraversal | None = None
        self.flows: FlowFilter | None = None
        self.stub: DnsStub | None = None
        self.plan: tunplan.TunPlan | None = None
        self.addresses: tuple[str, str] | None = None
        self.published: str | None = None
        self.peers: dict[bytes, PeerEntry] = {}
        self._routes: set[str] = set()
        self._allowed: dict[bytes, list[str]] = {}
        self.has_ipv6 = False
        self.relay: RelayLink | None = None
        # the routers to relay through, fastest first (the last refresh's ranking)
        self._relay_routers: list[str] = []
        self._relay_retry_at = 0.0  # monotonic; a relay link that could not be made waits
        self._relay_backoff = _RELAY_RETRY_FIRST
        # when the relay link was last shown each peer's relay ticket (monotonic seconds)
        self._presented: dict[bytes, float] = {}

    @property
    def port(self) -> int:
        assert self.sock is not None, "prepare() first"
        return int(self.sock.getsockname()[1])

    async def prepare(self) -> None:
        """Check we may, undo a crashed run's leftovers, bind the WireGuard UDP port."""
        require_root()
        await asyncio.to_thread(tunplan.uninstall, self._state_dir)
        host, port = self.settings.listen_host, self.settings.listen_port
        try:
            sock = _bind_udp(host, port)
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise ConfigError("tun_port_in_use", f"cannot bind UDP {where}: {exc}") from None
        enlarge_buffers(sock)
        mark = self.settings.underlay_mark
        if mark is not None:
            # The tunnel's own datagrams carry the mark, so the exit route never takes them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.setblocking(False)
        self.sock = sock

    async def advertise(self, client: Any) -> None:
        """Tell the controller which routes we offer (subnet router, exit node); once."""
        settings = self.settings
        if settings.advertise_routes or settings.advertise_exit_node:
            await client.set_network_routes(
                list(settings.advertise_routes), settings.advertise_exit_node
            )

    async def apply(
        self,
        ipv4: str | None,
        ipv6: str | None,
        view: Mapping[str, Any],
        routers: list[str] | None = None,
    ) -> None:
        """Follow the controller: install on the first call with addresses, then match the
        device's peers, routes, grants and DNS names to `view`; keep the relay link to the
        first of `routers` (addresses, fastest measured first) up."""
        if self.tun is None:
            if not ipv4 or not ipv6:
                self._counters.add("tun_no_address")
                return
            await self._install(ipv4, ipv6)
        assert self.device is not None and self.flows is not None
        wanted = parse_peers(view, self._counters)
        offered = {k: (p.name, p.routes) for k, p in wanted.items()}
        choice = choose_routes(offered, self.settings.exit_node, ipv6=self.has_ipv6)
        if choice.conflicts:
            self._counters.add("tun_route_conflict", choice.conflicts)
        if self.settings.exit_node is not None and not choice.exit_found:
            self._counters.add("tun_exit_node_missing")
        for key in set(self.peers) - set(wanted):
            self.device.remove_peer(key)
            log.info("network mode: peer %s withdrawn", self.peers[key].name)
        for key in set(self.peers) - set(wanted):
            if self.driver is not None:
                self.driver.forget_paths(key)
            self._presented.pop(key, None)
        await self.use_relays(routers or [])
        for key, peer in wanted.items():
            allowed = [*peer.prefixes(), *choice.by_peer.get(key, [])]
            if self._allowed.get(key, allowed) != allowed:
                self.device.remove_peer(key)  # allowed IPs only grow in place: start afresh
            self._allowed[key] = allowed
            # the driver's path set decides where datagrams go (relay, direct, or the pair
            # NAT traversal's probes found); the endpoint is only its fallback
            known = self.device.endpoint_of(key) is not None if key in self.peers else False
            endpoint = peer.endpoint or (None if known else relay_address(key))
            self.device.add_peer(key, endpoint=endpoint, allowed_ips=allowed)
            self._set_paths(key, peer)
        self._allowed = {k: v for k, v in self._allowed.items() if k in wanted}
        self.peers = wanted
        if self.nat is not None:
            self.nat.refresh_soon(lambda: ControllerClient(self._identity), view)
        self.flows.set_grants({k: parse_grant(p.reach) for k, p in wanted.items()})
        prefixes = [
            prefix
            for peer in wanted.values()
            for prefix in peer.prefixes()
            if self.has_ipv6 or ":" not in prefix
        ] + choice.subnets
        assert self.tun is not None
        self._routes = await asyncio.to_thread(
            tunplan.set_routes, self.tun.name, self._routes, prefixes
        )
        missing = set(prefixes) - self._routes
        if missing:
            self._counters.add("tun_route_refused", len(missing))
        if self.stub is not None and self.addresses is not None:
            names = {f"{p.name}.{self.settings.suffix}": p.ipv4 for p in wanted.values()}
            names[f"{self._identity.name}.{self.settings.suffix}"] = self.addresses[0]
            self.stub.set_names(names)
            names6 = {f"{p.name}.{self.settings.suffix}": p.ipv6 for p in wanted.values() if p.ipv6}
            names6[f"{self._identity.name}.{self.settings.suffix}"] = self.addresses[1]
            self.stub.set_names6(names6)

    async def close(self) -> None:
        """Undo the system changes and stop (the link goes with the TUN descriptor)."""
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        if self.driver is not None:
            self.driver.close()
            self.driver = None
        if self.nat is not None:
            await self.nat.close()
            self.nat = None
        if self.tun is not None:
            self.tun.close()
            self.tun = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.stub is not None:
            await self.stub.close()
            self.stub = None
        with contextlib.suppress(ConfigError):
            removed = await asyncio.to_thread(tunplan.uninstall, self._state_dir)
            if removed:
                log.info("network mode removed: %s", "; ".join(removed))
        self._routes.clear()

    def snapshot(self) -> dict[str, Any]:
        stats = self.driver.statistics() if self.driver is not None else {}
        device = stats.get("device")
        per_peer: dict[str, Any] = device.get("per_peer", {}) if isinstance(device, dict) else {}
        return {
            "interface": self.tun.name if self.tun is not None else None,
            "ipv4": self.addresses[0] if self.addresses else None,
            "ipv6": self.addresses[1] if self.addresses else None,
            "listen_port": self.port if self.sock is not None else None,
            "published_endpoint": self.published,
            "dns": self.stub.snapshot() if self.stub is not None else None,
            "peers": [
                {
                    "name": p.name,
                    "ipv4": p.ipv4,
                    "ipv6": p.ipv6,
                    "endpoint": f"{p.endpoint[0]}:{p.endpoint[1]}" if p.endpoint else None,
                    "reach": list(p.reach),
                    "routes": list(p.routes),
                    "routed": f"{p.ipv4}/32" in self._routes,
                    "path": self._path_name(k),
                    "path_reason": self.nat.path_reason(k) if self.nat is not None else None,
                    **{
                        field: per_peer.get(k.hex(), {}).get(field)
                        for field in ("rx_bytes", "tx_bytes", "last_handshake")
                    },
                }
                for k, p in sorted(self.peers.items(), key=lambda kv: kv[1].name)
            ],
            "nat": self.nat.snapshot() if self.nat is not None else None,
            "filter": stats.get("filter"),
            "io": stats.get("io"),
            "tun_io": stats.get("port"),
            "relay": self.relay.statistics() if self.relay is not None else None,
            "device": _device_summary(device),
        }

    # -- installing -------------------------------------------------------------------------

    async def _install(self, ipv4: str, ipv6: str) -> None:
        settings = self.settings
        resolv = settings.resolv_conf if settings.dns else None
        plan = tunplan.TunPlan.new(settings.ifname, resolv, settings.dns_address)
        await asyncio.to_thread(tunplan.record, self._state_dir, plan)
        try:
            # an operator's escape hatch (and the benchmark's A/B): "tso,gro", "gro", "off"
            offload = os.environ.get("UMBRA_TUN_OFFLOAD", "tso,gro")
            self.tun = Tun.open(settings.ifname, offload="gro" in offload, tso="tso" in offload)
            index = tunplan.interface_index(self.tun.name)
            if index is not None:
                plan = plan.with_index(index)
                await asyncio.to_thread(tunplan.record, self._state_dir, plan)
            self.has_ipv6 = await asyncio.to_thread(
                tunplan.add_addresses, self.tun.name, ipv4, ipv6, settings.mtu
            )
            if not self.has_ipv6:
                self._counters.add("tun_ipv6_unavailable")
                log.warning("network mode: no IPv6 on this host; %s stays unassigned", ipv6)
            self.addresses = (ipv4, ipv6)
            plan = await asyncio.to_thread(self._route_plan, plan)
            self.device = Device.for_identity(self._identity)
            self.flows = FlowFilter([ipv4, ipv6])
            self.flows.set_served(settings.advertise_routes)
            assert self.sock is not None
            self.nat = NatTraversal(
                self.sock,
                self._identity.noise_private_key,
                skip_interfaces=[self.tun.name],
                mark=self.settings.underlay_mark,
            )
            # the driver runs the device with STUN and probes merged in (same UDP port)
            machine = cast(Device, self.nat.wrap(self.device, paths=self._path_set))
            sock = cast(socket.socket, self.nat.socket)  # sends through our TURN relay if need be
            self.driver = WireGuardDriver(
                machine,
                sock,
                self.tun,
                on_event=self._event,
                flow_filter=self.flows,
                path_deadline=settings.path_deadline,
                probe_interval=settings.path_probe_interval,
            )
            self.driver.start()
            if settings.dns and plan.resolv_original is not None:
                upstreams = read_upstreams(plan.resolv_original, settings.dns_address)
                self.stub = DnsStub(
                    self._counters,
                    upstreams,
                    host=settings.dns_address,
                    port=settings.dns_port,
                    suffix=settings.suffix,
                )
                await self.stub.start()
                await asyncio.to_thread(tunplan.write_resolv, plan)
        except OSError as exc:
            await self.close()
            raise ConfigError("tun_mode_failed", f"cannot start network mode: {exc}") from None
        except BaseException:
            await self.close()
            raise
        self.plan = plan
        log.info(
            "network mode: %s %s %s, WireGuard UDP port %d",
            self.tun.name,
            ipv4,
            ipv6,
            self.port,
        )

    def _route_plan(self, plan: tunplan.TunPlan) -> tunplan.TunPlan:
        """Forwarding and masquerade when we route for others; policy routing when an exit
        node routes for us (both recorded in the plan before they are made)."""
        settings = self.settings
        if settings.advertise_routes or settings.advertise_exit_node:
            keep_source = () if settings.snat_subnet_routes else settings.advertise_routes
            plan = tunplan.forward_and_masquerade(self._state_dir, plan, keep_source)
        if settings.exit_node is not None:
            plan = tunplan.route_through_exit(
                self._state_dir,
                plan,
                table=settings.route_table,
                mark=settings.fwmark,
                priority=settings.rule_priority,
                allow_lan=settings.exit_node_allow_lan,
                exempt=controller_addresses(self._identity.controller_url),
                ipv6=self.has_ipv6,
            )
        return plan

    # -- paths -------------------------------------------------------------------------------

    async def use_relays(self, routers: list[str]) -> None:
        """Relay through the first of `routers` (addresses, fastest first) that answers;
        a live link stays where it is."""
        self._relay_routers = list(routers)
        await self._relay_link(self._relay_routers)

    async def keep_relay(self) -> None:
        """Between refreshes: a relay link that dropped (its router died or restarted) moves
        to another router at once (`_relay_link`), and every peer's ticket is shown on the new
        link; a link that could not be made is retried with backoff."""
        if self.driver is None or (self.relay is not None and self.relay.live):
            return
        if not self._relay_routers or time.monotonic() < self._relay_retry_at:
            return
        await self._relay_link(self._relay_routers)
        if self.relay is None:
            return
        for key, peer in self.peers.items():
            self._set_paths(key, peer)

    async def _relay_link(self, routers: list[str]) -> None:
        """Keep a relay link up, to the first of `routers` that answers (a few are tried,
        the router of a link that dropped last); tickets are shown again on a new link."""
        if self.relay is not None and self.relay.live:
            return
        lost = self.relay.address if self.relay is not None else None
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        if not routers or self.driver is None:
            return
        driver = self.driver
        mark = self.settings.underlay_mark
        for router in sorted(routers, key=lambda r: r == lost)[:_RELAY_CANDIDATES]:  # stable
            link = RelayLink(self._identity, router, driver.handle_relayed, mark=mark)
            try:
                await link.connect(timeout=5.0)
            except (OSError, ConnectionError, TimeoutError) as exc:
                self._counters.add("tun_relay_unreachable")
                log.warning("network mode: relay router %s unreachable: %r", router, str(exc))
                continue
            self.relay = link
            driver.relay = link
            self._presented.clear()
            self._relay_backoff = _RELAY_RETRY_FIRST
            if lost is not None:
                self._counters.add("tun_relay_moved")
            log.info("network mode: relaying through router %s", link.router)
            return
        self._relay_retry_at = time.monotonic() + self._relay_backoff
        self._relay_backoff = min(self._relay_backoff * 2, _RELAY_RETRY_MAX)

    def _set_paths(self, key: bytes, peer: PeerEntry) -> None:
        driver, relay = self.driver, self.relay
        if driver is None:
            return
        paths: list[WgPath] = []
        if peer.endpoint is not None:
            paths.append(WgPath(PathKind.DIRECT, peer.endpoint))
        if relay is not None and relay.live and peer.relay_ticket is not None:
            # Each view's ticket has at least 400 s left (the controller reuses signed ones
            # only that long); the router needs one only on a new link, before the last
            # expires, or after it refused one.
            now = time.monotonic()
            shown = self._presented.get(key)
            if shown is None or now - shown > _REPRESENT_AFTER or key in relay.refused_peers:
                relay.refused_peers.discard(key)
                relay.allow(key, peer.relay_ticket)
                self._presented[key] = now
            paths.append(WgPath(PathKind.RELAY, relay_address(key)))
        driver.set_paths(key, paths)

    def _path_set(self, key: bytes) -> PathSet | None:
        return self.driver.path_set(key) if self.driver is not None else None

    def _path_name(self, key: bytes) -> str | None:
        path = self.driver.current_path(key) if self.driver is not None else None
        return None if path is None else path.kind.value

    def _event(self, event: Event) -> None:
        if isinstance(event, PeerSilent):
            self._counters.add("tun_peer_silent")


def controller_addresses(url: str) -> list[str]:
    """The controller's addresses, kept out of the exit node's tunnel (the agent must reach
    the controller to learn anything, the exit node included)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})


def enlarge_buffers(sock: socket.socket, size: int = SOCKET_BUFFER) -> None:
    """Give the WireGuard socket `size` bytes of kernel buffer each way: a peer's GSO burst
    arrives faster than one wake-up drains it, and with Linux's default (~208 KiB) the
    receive queue overflowed under a single TCP stream, 1.4% of datagrams lost to
    UdpRcvbufErrors and as many TCP retransmits. As root the FORCE options pass the
    `net.core.[rw]mem_max` cap; otherwise the capped size is what we get."""
    for force, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _bind_udp(host: str, port: int) -> socket.socket:
    """The WireGuard socket. ``::`` is one dual-stack socket (IPV6_V6ONLY off: IPv4 and IPv6
    peers on one port); any other address binds its own family. The default stays
    ``0.0.0.0`` (IPv4) while other users of this socket (NAT traversal's STUN and probes)
    address it with IPv4 tuples, which a dual-stack socket refuses."""
    if host == "::":
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
        except OSError:
            sock.close()
            raise
        return sock
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _endpoint(text: object) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` -> (host, port); None for anything else."""
    if not isinstance(text, str):
        return None
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        try:
            socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            return None
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            return None
        return host, int(port)
    host, _, port = text.rpartition(":")
    try:
        socket.inet_aton(host)
    except OSError:
        return None
    if not port.isdigit() or not 0 < int(port) < 65536 or host.count(".") != 3:
        return None
    return host, int(port)


def _device_summary(stats: object) -> dict[str, Any] | None:
    if not isinstance(stats, dict):
        return None
    return {k: v for k, v in stats.items() if k != "per_peer"}  # per peer: under "peers"
