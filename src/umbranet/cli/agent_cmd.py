"""``umbra up|down|status|whois|ping|ip``: run the agent and talk to it through its local API.

`up` runs the agent in the foreground (or detached with ``--daemon``); `down` stops it by its
pidfile; the others call the local API on the agent's Unix socket and render the answer.

Only the modules that give options their defaults are imported at the top: `status`, `whois`
and `ping` need the local API client, not the agent's data path or its Workload API (gRPC),
which `up` imports when it runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from umbranet.agent.config import REFRESH_INTERVAL, ConfigError
from umbranet.agent.dns_stub import DEFAULT_STUB_ADDRESS
from umbranet.agent.proxyaddr import DEFAULT_PROXY_RANGE
from umbranet.cli.common import CliState, emit, fail, handle_errors, out, state, table
from umbranet.obs import LogFormat, configure_logging

if TYPE_CHECKING:
    from umbranet.agent.config import AgentConfig
    from umbranet.agent.runner import Agent

__all__ = ["register"]

StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="UMBRA_AGENT_DIR",
        help="Agent state directory (socket, pidfile, log, ports). Default ~/.umbra/agent.",
    ),
]


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
    app.command("whois")(whois)
    app.command("ping")(ping)
    app.command("ip")(ip)


def up(
    ctx: typer.Context,
    *,
    identity: Annotated[
        Path, typer.Option("--identity", "-i", envvar="UMBRA_IDENTITY", help="Identity file.")
    ],
    state_dir: StateDirOption = None,
    workload_socket: Annotated[
        str | None,
        typer.Option(
            "--workload-socket",
            envvar="SPIFFE_ENDPOINT_SOCKET",
            help="SPIFFE Workload API socket (PATH or unix:///PATH). "
            "Default: workload.sock in the state directory.",
        ),
    ] = None,
    listen_base: Annotated[
        str, typer.Option("--listen-base", help="Loopback address the listeners use.")
    ] = "127.0.0.1",
    port: Annotated[
        list[str] | None,
        typer.Option("--port", help="SERVICE=PORT: a fixed loopback port (repeatable)."),
    ] = None,
    daemon: Annotated[bool, typer.Option("--daemon", help="Detach; log to the state dir.")] = (
        False
    ),
    refresh: Annotated[
        float,
        typer.Option(
            "--refresh",
            help="Seconds between safety refreshes from the controller (changes also arrive "
            "at once as epoch events).",
            min=0.2,
        ),
    ] = REFRESH_INTERVAL,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    root: Annotated[
        bool,
        typer.Option(
            "--root",
            help="Root mode (Linux): a DNS stub answers SERVICE.umbra with proxy addresses "
            "and nftables steers their TCP to the agent; undone by `umbra down`.",
        ),
    ] = False,
    proxy_range: Annotated[
        str, typer.Option("--proxy-range", help="Root mode: the proxy address range.")
    ] = DEFAULT_PROXY_RANGE,
    dns_address: Annotated[
        str, typer.Option("--dns-address", help="Root mode: where the DNS stub listens (:53).")
    ] = DEFAULT_STUB_ADDRESS,
    dns_name: Annotated[
        list[str] | None,
        typer.Option("--dns-name", help="Root mode: NAME=SERVICE, an extra name (repeatable)."),
    ] = None,
    allow_uid: Annotated[
        list[int] | None,
        typer.Option(
            "--allow-uid",
            help="Let this local uid use the loopback listeners too (repeatable); by default "
            "only the agent's own user may, since every connection acts as its identity.",
        ),
    ] = None,
    allow_any_user: Annotated[
        bool,
        typer.Option("--allow-any-user", help="Let every local user use the loopback listeners."),
    ] = False,
    tun: Annotated[
        bool,
        typer.Option(
            "--tun",
            help="Network mode (Linux, root): a TUN interface with this identity's overlay "
            "addresses, WireGuard to the peers policy lets it talk to, PEER.umbra names; "
            "undone by `umbra down`.",
        ),
    ] = False,
    tun_port: Annotated[
        int, typer.Option("--tun-port", help="Network mode: WireGuard UDP port (0: any).")
    ] = 51820,
    tun_endpoint: Annotated[
        str | None,
        typer.Option(
            "--tun-endpoint-host",
            help="Network mode: the IP peers reach us at (default: what the controller sees).",
        ),
    ] = None,
    tun_dns: Annotated[
        bool,
        typer.Option("--tun-dns/--no-tun-dns", help="Network mode: point resolv.conf at the stub."),
    ] = True,
    advertise_routes: Annotated[
        str | None,
        typer.Option(
            "--advertise-routes",
            help="Network mode: route for peers into these LAN prefixes (comma-separated CIDRs; "
            "forwarding + masquerade), once an admin or the policy approves them.",
        ),
    ] = None,
    advertise_exit_node: Annotated[
        bool,
        typer.Option(
            "--advertise-exit-node",
            help="Network mode: offer to carry peers' internet traffic (once approved).",
        ),
    ] = False,
    snat_subnet_routes: Annotated[
        bool,
        typer.Option(
            "--snat-subnet-routes/--no-snat-subnet-routes",
            help="With --advertise-routes: masquerade clients' traffic into those prefixes "
            "(default). --no-snat-subnet-routes keeps each client's overlay address as the "
            "source; the LAN must then route the overlay range back via this router.",
        ),
    ] = True,
    exit_node: Annotated[
        str | None,
        typer.Option(
            "--exit-node", help="Network mode: send all traffic through this peer (full tunnel)."
        ),
    ] = None,
    exit_node_allow_lan: Annotated[
        bool,
        typer.Option(
            "--exit-node-allow-lan",
            help="With --exit-node: the LAN (the main table's specific routes) stays direct.",
        ),
    ] = False,
    path_deadline: Annotated[
        float,
        typer.Option(
            "--path-deadline",
            min=1.0,
            help="Network mode: seconds a direct path may stay silent while we send before "
            "traffic returns to the relay.",
        ),
    ] = 15.0,
    path_probe_interval: Annotated[
        float,
        typer.Option(
            "--path-probe-interval",
            min=0.2,
            help="Network mode: first interval between probes of a direct path not yet proven "
            "(backs off to 60 s).",
        ),
    ] = 5.0,
) -> None:
    """Run the agent: loopback listeners for the services you may dial, hosting for the ones
    you may bind, and the local API."""
    from umbranet.agent.config import (
        AgentConfig,
        RootSettings,
        TunSettings,
        default_state_dir,
        parse_port_override,
        prepare_state_dir,
    )
    from umbranet.agent.daemon import daemonize
    from umbranet.agent.redirect import require_root
    from umbranet.agent.rootmode import parse_dns_name

    cli = state(ctx)
    with _errors(cli):
        overrides = dict(parse_port_override(p) for p in port or [])
        config = AgentConfig(
            identity=identity.expanduser().resolve(),
            state_dir=(state_dir or default_state_dir()).expanduser().resolve(),
            listen_base=listen_base,
            ports=overrides,
            refresh_interval=refresh,
            workload_socket=_workload_socket(workload_socket),
            allow_uids=frozenset(allow_uid or []),
            allow_any_user=allow_any_user,
            root=RootSettings(
                proxy_range=proxy_range,
                dns_address=dns_address,
                dns_names=dict(parse_dns_name(n) for n in dns_name or []),
            )
            if root
            else None,
            tun=TunSettings(
                listen_port=tun_port,
                endpoint_host=tun_endpoint,
                dns=tun_dns,
                dns_address=dns_address,
                advertise_routes=tuple(
                    r.strip() for r in (advertise_routes or "").split(",") if r.strip()
                ),
                advertise_exit_node=advertise_exit_node,
                snat_subnet_routes=snat_subnet_routes,
                exit_node=exit_node,
                exit_node_allow_lan=exit_node_allow_lan,
                path_deadline=path_deadline,
                path_probe_interval=path_probe_interval,
            )
            if tun
            else None,
        )
        routing = advertise_routes or advertise_exit_node or exit_node or exit_node_allow_lan
        if routing and not tun:
            raise ConfigError("routes_need_tun", "routes and exit nodes need network mode (--tun)")
        if root and tun:
            raise ConfigError(
                "tun_with_root", "--tun and --root cannot be combined yet (one DNS stub each)"
            )
        if root or tun:
            require_root()
        prepare_state_dir(config.state_dir)
        if daemon:
            pid = daemonize(
                config, lambda ready: _run(config, verbose, lambda _a: ready(), cli.log_format)
            )
            emit(
                cli,
                {"pid": pid, "socket": str(config.socket_path), "log": str(config.log_file)},
                lambda: out.print(f"agent running (pid {pid}); log: {config.log_file}"),
            )
            return
        with contextlib.suppress(KeyboardInterrupt):
            _run(config, verbose, lambda agent: _say_ready(cli, agent), cli.log_format)


def down(
    ctx: typer.Context,
    state_dir: StateDirOption = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 15.0,
) -> None:
    """Stop the agent recorded in the state directory and wait until it exited."""
    from umbranet.agent import tunplan
    from umbranet.agent.daemon import stop_agent
    from umbranet.agent.redirect import leftovers, uninstall

    cli = state(ctx)
    with _errors(cli):
        config = _config(state_dir)
        pid: int | None = None
        try:
            pid = stop_agent(config, timeout)
        except ConfigError as exc:
            # A crashed root-mode agent left rules, a route and resolv.conf: undo them.
            crashed = leftovers(config.state_dir) or tunplan.leftovers(config.state_dir)
            if exc.code != "not_running" or crashed is None:
                raise
        cleaned = uninstall(config.state_dir) + tunplan.uninstall(config.state_dir)
    emit(
        cli,
        {"stopped": pid, "cleaned": cleaned},
        lambda: out.print(
            (f"agent {pid} stopped" if pid else "no agent was running")
            + (f"; removed leftovers: {'; '.join(cleaned)}" if cleaned else "")
        ),
    )


def status(ctx: typer.Context, state_dir: StateDirOption = None) -> None:
    """Identity, routers and links, services and their local ports, live streams, counters."""
    cli = state(ctx)
    with _errors(cli):
        data = _local_api(state_dir).get("/v1/status")
    emit(cli, data, lambda: _render_status(data))


def ip(
    ctx: typer.Context,
    state_dir: StateDirOption = None,
    identity: Annotated[
        Path | None,
        typer.Option(
            "--identity",
            "-i",
            envvar="UMBRA_IDENTITY",
            help="Ask the controller with this identity when no agent runs.",
        ),
    ] = None,
    six: Annotated[bool, typer.Option("-6", help="Only the IPv6 address.")] = False,
    four: Annotated[bool, typer.Option("-4", help="Only the IPv4 address.")] = False,
) -> None:
    """This device's overlay addresses (network mode), from the agent or the controller."""
    from umbranet.agent.localapi import AgentApiError

    cli = state(ctx)
    with _errors(cli):
        try:
            overlay = _local_api(state_dir).get("/v1/status").get("overlay") or {}
        except (AgentApiError, OSError):
            if identity is None:
                raise
            overlay = _overlay_from_controller(identity)
        if not overlay.get("ipv4"):
            fail(cli, "no_overlay_address", "the controller has given no overlay address yet")
    wanted = [k for k, on in (("ipv4", four), ("ipv6", six)) if on] or ["ipv4", "ipv6"]
    emit(
        cli,
        {k: overlay.get(k) for k in wanted},
        lambda: _say("\n".join(overlay[k] for k in wanted)),
    )


def _overlay_from_controller(identity: Path) -> dict[str, Any]:
    from umbranet.aio.runtime import run
    from umbranet.client.controller import ControllerClient
    from umbranet.pki import IdentityFile

    loaded = IdentityFile.load(identity.expanduser())

    async def ask() -> dict[str, Any]:
        async with ControllerClient(loaded) as client:
            me = await client.me()
        return {"ipv4": me.ipv4, "ipv6": me.ipv6}

    result: dict[str, Any] = run(ask())
    return result


def whois(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="IP:PORT of a connection the agent carries.")],
    state_dir: StateDirOption = None,
) -> None:
    """Who is behind a connection the agent delivered (host: the app's peer address; client:
    the app's own address)."""
    cli = state(ctx)
    with _errors(cli):
        data = _local_api(state_dir).get("/v1/whois", {"addr": address})
    emit(cli, data, lambda: _say(whois_line(data)))


def whois_line(data: dict[str, Any]) -> str:
    """One line for a whois answer; attributes in brackets, printed as text, never markup."""
    return (
        f"{data['addr']}: {data['name']} ({data['spiffe_id']}) "
        f"attributes [{', '.join(data['attributes'])}], {data['direction']} "
        f"on {data['service']} via {data['router']}"
    )


def ping(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="Service name.")],
    count: Annotated[int, typer.Option("--count", "-c", min=1, max=10)] = 3,
    state_dir: StateDirOption = None,
) -> None:
    """Round-trip time to SERVICE through the overlay, and the router that carried it."""
    cli = state(ctx)
    with _errors(cli):
        data = _local_api(state_dir).post("/v1/ping", {"service": service, "count": count})
    emit(
        cli,
        data,
        lambda: _say(
            f"{service}: host {data['host'].get('name')} via router {data['router']}: "
            + ", ".join(f"{r:.2f} ms" for r in data["rtt_ms"])
            + f" (min {data['min_ms']:.2f}, avg {data['avg_ms']:.2f})"
            + "".join(
                f"\n  hop {hop['router']}: link RTT "
                + ("not measured yet" if hop.get("rtt_ms") is None else f"{hop['rtt_ms']:.2f} ms")
                for hop in data.get("path", [])
            )
        ),
    )


# -- helpers -----------------------------------------------------------------------------------


def _say(text: str) -> None:
    """Print data from the network as text: rich would read ``[db-hosts]`` as markup."""
    out.print(text, markup=False)


def _local_api(state_dir: Path | None) -> Any:
    from umbranet.agent.localapi import LocalApiClient

    return LocalApiClient(_config(state_dir).socket_path)


def _run(
    config: AgentConfig,
    verbose: bool,
    on_ready: Callable[[Agent], None],
    log_format: LogFormat = "text",
) -> None:
    from umbranet.agent.runner import run_agent
    from umbranet.aio.runtime import run

    configure_logging(logging.DEBUG if verbose else logging.INFO, log_format)
    # One line per controller request every refresh would drown the agent's own log.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
    run(run_agent(config, on_ready))


def _say_ready(cli: CliState, agent: Agent) -> None:
    snapshot = agent.status()
    emit(
        cli,
        {"event": "ready", **snapshot},
        lambda: out.print(
            f"agent up as {snapshot['identity']['spiffe_id']} (pid {snapshot['agent']['pid']}); "
            f"local API {snapshot['agent']['socket']}\n"
            + "\n".join(
                f"  dial {d['service']} at {d['listen'] or d['error']}" for d in snapshot["dial"]
            )
        ),
    )


def _config(state_dir: Path | None) -> AgentConfig:
    from umbranet.agent.config import AgentConfig, default_state_dir

    directory = (state_dir or default_state_dir()).expanduser()
    return AgentConfig(identity=Path(), state_dir=directory)


def _workload_socket(value: str | None) -> Path | None:
    from umbranet.agent.workload import parse_endpoint_socket

    if not value:
        return None
    try:
        return parse_endpoint_socket(value).resolve()
    except ValueError as exc:
        raise ConfigError("bad_workload_socket", str(exc)) from None


@contextlib.contextmanager
def _errors(cli: CliState) -> Iterator[None]:
    from umbranet.agent.localapi import AgentApiError, ApiError

    with handle_errors(cli):
        try:
            yield
        except ConfigError as exc:
            fail(cli, exc.code, exc.reason)
        except AgentApiError as exc:
            fail(cli, exc.code, exc.message)
        except ApiError as exc:
            fail(cli, exc.code, exc.reason)


def _render_status(data: dict[str, Any]) -> None:
    identity, agent = data["identity"], data["agent"]
    out.print(f"identity  {identity['spiffe_id']} (certificate until {identity['cert_not_after']})")
    out.print(f"agent     pid {agent['pid']}, local API {agent['socket']}")
    overlay = data.get("overlay") or {}
    if overlay.get("ipv4"):
        out.print(f"overlay   {overlay['ipv4']} {overlay['ipv6']}")
    controller = data["controller"]
    out.print(
        f"controller {identity['controller_url']}: last refresh "
        f"{controller['last_refresh'] or 'never'}"
        + (f", error: {controller['error']}" if controller["error"] else "")
    )
    users = data.get("local_users")
    if users:
        who = (
            "any user"
            if users["any"]
            else ", ".join(str(uid) for uid in [users["own_uid"], *users["allowed"]])
        )
        out.print(
            f"listeners local uids {who}; refused {users['refused']}, unknown {users['unknown']}"
        )
    table(
        "Routers",
        ["name", "address", "link", "rtt ms", "home"],
        [
            (
                r["name"],
                r["address"],
                r["link"],
                "-" if r.get("rtt_ms") is None else f"{r['rtt_ms']:.2f}",
                "*" if r.get("home") else "",
            )
            for r in data["routers"]
        ],
    )
    table(
        "Services you dial",
        ["service", "listen", "port from", "connections", "problem"],
        [
            (
                d["service"],
                d["listen"],
                d["source"],
                d["connections"],
                d["error"] or d["last_failure"],
            )
            for d in data["dial"]
        ],
    )
    table(
        "Services you host",
        ["service", "host address", "bound at", "streams", "problem"],
        [
            (
                h["service"],
                h["host_address"],
                h["bound_routers"],
                h["streams"],
                h["error"] or h["last_failure"],
            )
            for h in data["host"]
        ],
    )
    if data.get("root"):
        root = data["root"]
        dns = root["dns"] or {}
        out.print(
            f"root mode: {root['proxy_range']} -> {root['transparent_listen']}, DNS stub "
            f"{dns.get('listen')} (upstream {', '.join(dns.get('upstreams', [])) or 'none'})"
            + (f", names via resolved link {link}" if (link := root.get("resolved_link")) else "")
        )
        table(
            "Intercept names",
            ["name", "proxy address"],
            sorted(dns.get("names", {}).items()),
        )
    tun = data.get("tun")
    if tun:
        out.print(
            f"network mode: {tun['interface']} {tun['ipv4']} {tun['ipv6']}, WireGuard UDP "
            f"{tun['listen_port']} (published {tun['published_endpoint']})"
        )
        nat = tun.get("nat") or {}
        if nat.get("nat"):
            out.print(f"NAT: {nat['nat']}", markup=False)
        table(
            "Peers",
            ["name", "address", "endpoint", "path", "may open", "routes", "rx", "tx"],
            [
                (p["name"], p["ipv4"], p["endpoint"], p.get("path") or "-",
                 ", ".join(p["reach"]), ", ".join(p.get("routes") or []),
                 p["rx_bytes"], p["tx_bytes"])
                for p in tun["peers"]
            ],
        )  # fmt: skip
        drops = (tun.get("filter") or {}).get("drops") or {}
        if drops:
            out.print(
                "packets dropped by policy: "
                + ", ".join(f"{k}={v}" for k, v in sorted(drops.items()))
            )
    streams = data["streams"]
    out.print(f"live streams: {streams['dial']} dialed, {streams['host']} hosted")
    if data["counters"]:
        out.print("counters: " + ", ".join(f"{k}={v}" for k, v in data["counters"].items()))
