"""The agent's configuration and its state directory: what `umbra up` was told, where it keeps
its socket, pidfile, log and the ports it chose.

The state directory is private (0700): the local API socket inside it answers whois and
ping for whoever can connect, so only the owner may. Ports derived here are stable across
restarts and machines: the same service name always suggests the same loopback port.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from umbranet.agent.dns_stub import DEFAULT_STUB_ADDRESS
from umbranet.agent.proxyaddr import DEFAULT_PROXY_RANGE

__all__ = [
    "DEFAULT_STATE_DIR",
    "DERIVED_PORT_BASE",
    "DERIVED_PORT_SPAN",
    "REFRESH_INTERVAL",
    "AgentConfig",
    "ConfigError",
    "RootSettings",
    "TunSettings",
    "default_state_dir",
    "derived_port",
    "parse_port_override",
    "prepare_state_dir",
]

DEFAULT_STATE_DIR = Path("~/.umbra/agent")
# The safety poll of `GET /v1/me`: changes arrive as epoch events at once; this only catches
# what an interrupted event stream missed.
REFRESH_INTERVAL = 300.0
# Derived ports live in 15000..24999: above the well-known and registered ports people
# usually run locally, below Linux's ephemeral range (32768+), so a client's own outgoing
# connections never hold the port the agent wants.
DERIVED_PORT_BASE = 15000
DERIVED_PORT_SPAN = 10000


class ConfigError(ValueError):
    """A configuration the user can fix: `code` for scripts, `reason` for people."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything `umbra up` needs; paths inside the state directory are derived from it."""

    identity: Path
    state_dir: Path
    listen_base: str = "127.0.0.1"
    ports: Mapping[str, int] = field(default_factory=dict)
    refresh_interval: float = REFRESH_INTERVAL
    # Root mode (``umbra up --root``, Linux): DNS stub + kernel redirect; None = loopback only.
    root: RootSettings | None = None
    # Network mode (``umbra up --tun``, Linux): TUN + WireGuard; None = no network mode.
    tun: TunSettings | None = None
    # The SPIFFE Workload API socket (``--workload-socket``/``SPIFFE_ENDPOINT_SOCKET``).
    workload_socket: Path | None = None
    # Local users besides the agent's own who may use the loopback listeners (each connection
    # acts as the agent's identity): ``--allow-uid N`` (repeatable), ``--allow-any-user``.
    allow_uids: frozenset[int] = frozenset()
    allow_any_user: bool = False

    @property
    def socket_path(self) -> Path:
        return self.state_dir / "agent.sock"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "agent.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "agent.log"

    @property
    def ports_file(self) -> Path:
        return self.state_dir / "ports.json"

    @property
    def workload_socket_path(self) -> Path:
        """Where the SPIFFE Workload API listens: as configured, else in the state dir."""
        return self.workload_socket or self.state_dir / "workload.sock"


@dataclass(frozen=True, slots=True)
class RootSettings:
    """Root mode's knobs: the proxy range, where the DNS stub listens, the intercept suffix,
    extra names (name -> service) and the resolv.conf to replace."""

    proxy_range: str = DEFAULT_PROXY_RANGE
    dns_address: str = DEFAULT_STUB_ADDRESS
    dns_port: int = 53
    suffix: str = "umbra"
    dns_names: Mapping[str, str] = field(default_factory=dict)
    resolv_conf: Path = Path("/etc/resolv.conf")


@dataclass(frozen=True, slots=True)
class TunSettings:
    """Network mode's knobs: the interface, the WireGuard UDP port (0: any), the endpoint
    host to publish (None: the address the controller sees us at), the MTU, and the DNS
    stub's place and suffix (``dns=False`` leaves resolv.conf alone)."""

    ifname: str = "umbra0"
    listen_host: str = "0.0.0.0"
    listen_port: int = 51820
    endpoint_host: str | None = None
    mtu: int = 1420
    dns: bool = True
    dns_address: str = DEFAULT_STUB_ADDRESS
    dns_port: int = 53
    suffix: str = "umbra"
    resolv_conf: Path = Path("/etc/resolv.conf")
    # Subnet router / exit node (forwarding + masquerade) and exit-node client (policy routing).
    advertise_routes: tuple[str, ...] = ()
    advertise_exit_node: bool = False
    snat_subnet_routes: bool = True  # False: the LAN sees clients' overlay addresses
    exit_node: str | None = None
    exit_node_allow_lan: bool = False
    fwmark: int = 0x756D  # on our underlay sockets with an exit node (`underlay_mark`)
    route_table: int = 7567
    rule_priority: int = 7560
    # How soon a silent direct path falls back to the relay, and how eagerly an unproven one
    # is re-probed (`umbranet.proto.paths`); lower values trade probe traffic for recovery.
    path_deadline: float = 15.0
    path_probe_interval: float = 5.0

    @property
    def underlay_mark(self) -> int | None:
        """The firewall mark on every socket the agent opens to the underlay (the WireGuard
        UDP socket, router links for services and for the relay, a TURN server's link) when
        an exit node routes every unmarked packet into the tunnel; None without one."""
        return self.fwmark if self.exit_node is not None else None


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$UMBRA_AGENT_DIR`` if set, else ``~/.umbra/agent``."""
    configured = environ.get("UMBRA_AGENT_DIR")
    return Path(configured).expanduser() if configured else DEFAULT_STATE_DIR.expanduser()


def derived_port(service: str) -> int:
    """The loopback port a service gets when nothing else decides: stable per name."""
    return DERIVED_PORT_BASE + zlib.crc32(service.encode("utf-8")) % DERIVED_PORT_SPAN


def parse_port_override(text: str) -> tuple[str, int]:
    """``SERVICE=PORT`` -> (service, port); ConfigError ``bad_port`` otherwise."""
    service, sep, port = text.partition("=")
    service = service.strip()
    if not sep or not service or not port.strip().isdigit():
        raise ConfigError("bad_port", f"expected SERVICE=PORT, got {text!r}")
    number = int(port)
    if not 0 < number < 65536:
        raise ConfigError("bad_port", f"port {number} for {service} is out of range")
    return service, number


def prepare_state_dir(path: Path) -> None:
    """Create the state directory owner-only (0700), or refuse one another user owns."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise ConfigError("state_dir_not_owned", f"{path} belongs to uid {info.st_uid}")
    if info.st_mode & 0o077:
        path.chmod(0o700)
