"""``umbra netcheck``: how this machine reaches the network over UDP.

Asks every STUN server (the routers' STUN ports, listed by the controller, or ``--stun``
given here) how it sees one UDP socket, then prints: UDP reachable or not, the mapped
address(es), the NAT's mapping behaviour, the round-trip time to each server, and the home
router (the nearest). Read-only: it changes nothing on the machine or at the controller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from umbranet.cli.common import emit, fail, handle_errors, out, state

__all__ = ["register"]

_MEANING = {
    "no-nat": "no NAT: the address is this machine's own",
    "endpoint-independent": "endpoint-independent mapping (hole punching works)",
    "endpoint-dependent": "address-dependent mapping (direct paths need the peer to be open)",
    "unknown": "unknown (fewer than two servers answered)",
    "udp-blocked": "UDP blocked: only relayed paths",
}


def register(app: typer.Typer) -> None:
    app.command("netcheck")(netcheck)


def netcheck(
    ctx: typer.Context,
    identity: Annotated[
        Path | None,
        typer.Option(
            "--identity",
            "-i",
            envvar="UMBRA_IDENTITY",
            help="Ask the controller for the routers' STUN servers with this identity.",
        ),
    ] = None,
    stun: Annotated[
        list[str] | None,
        typer.Option(
            "--stun", help="HOST:PORT of a STUN server (repeatable; skips the controller)."
        ),
    ] = None,
    port: Annotated[int, typer.Option("--port", help="Local UDP port to test (0: any).")] = 0,
    timeout: Annotated[float, typer.Option("--timeout", min=0.2, help="Seconds to wait.")] = 3.0,
) -> None:
    """UDP reachability, mapped addresses, NAT mapping behaviour, RTT to each router."""
    import socket

    from umbranet.aio.nat import netcheck as run_netcheck
    from umbranet.aio.nat import parse_hostport
    from umbranet.aio.runtime import run

    cli = state(ctx)
    with handle_errors(cli):
        servers = list(stun or [])
        names: dict[str, str] = {}
        if not servers:
            if identity is None:
                fail(cli, "no_stun_servers", "give --stun HOST:PORT or --identity")
            names = _from_controller(identity)
            servers = list(names)
        if not servers:
            fail(
                cli, "no_stun_servers", "no router announces a STUN port (router run --stun-listen)"
            )
        try:
            addresses = [parse_hostport(s) for s in servers]
        except ValueError:
            fail(cli, "invalid_address", f"STUN servers must be HOST:PORT: {servers}")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("0.0.0.0", port))
            report = run(run_netcheck(addresses, sock=sock, timeout=timeout))
        finally:
            sock.close()
    data = report.to_json()
    data["home_router"] = names.get(report.home or "")

    def human() -> None:
        out.print(f"UDP:      {'yes' if report.udp else 'no (blocked or no server answered)'}")
        out.print(f"mapped:   {', '.join(data['mapped']) or '-'}", markup=False)  # type: ignore[arg-type]
        out.print(f"mapping:  {_MEANING.get(report.mapping, report.mapping)}", markup=False)
        for server, rtt in data["rtt_ms"].items():  # type: ignore[attr-defined]
            shown = "timeout" if rtt is None else f"{rtt:.1f} ms"
            out.print(f"  {server}: {shown}", markup=False)
        home = report.home or "-"
        if data["home_router"]:
            home = f"{data['home_router']} ({home})"
        out.print(f"home:     {home}", markup=False)

    emit(cli, data, human)


def _from_controller(identity: Path) -> dict[str, str]:
    """The routers' STUN addresses, each with its router's name."""
    from umbranet.aio.runtime import run
    from umbranet.client.controller import ControllerClient
    from umbranet.pki import IdentityFile

    loaded = IdentityFile.load(identity.expanduser())

    async def ask() -> dict[str, str]:
        async with ControllerClient(loaded) as client:
            config: dict[str, Any] = await client.nat_config()
        routers = config.get("stun_routers") or {}
        return {str(s): str(routers.get(s, "")) for s in config.get("stun") or []}

    return run(ask())
