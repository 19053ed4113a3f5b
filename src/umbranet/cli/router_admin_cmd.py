"""``umbra router create|list|delete|token|update``: the admin side of routers (``enroll``/``run``
live in `router_cmd`)."""

from __future__ import annotations

from typing import Annotated

import typer

from umbranet.cli.common import (
    admin_call,
    emit,
    out,
    state,
    table,
)

__all__ = ["register"]


def register(router_app: typer.Typer) -> None:
    """Add the admin commands to the ``router`` sub-app."""
    router_app.command("create")(create)
    router_app.command("list")(list_)
    router_app.command("delete")(delete)
    router_app.command("token")(token)
    router_app.command("update")(update)
    router_app.command("link")(link)
    router_app.command("mesh")(mesh)
    router_app.command("path")(path)


def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Router name, e.g. r1.")],
) -> None:
    """Create a router identity and print its enrollment token."""
    cli = state(ctx)

    created = admin_call(cli, lambda client: client.create_router(name))
    emit(cli, created, lambda: out.print(created.enrollment_token, markup=False))


def list_(ctx: typer.Context) -> None:
    """List routers and where they listen."""
    cli = state(ctx)

    rows = admin_call(cli, lambda client: client.routers())
    emit(
        cli,
        rows,
        lambda: table(
            "Routers",
            ["name", "address", "last seen", "spiffe id"],
            [[r.name, r.address, r.last_seen, r.spiffe_id] for r in rows],
        ),
    )


def delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Router name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a router and its identity: its links are refused from now on."""
    from umbranet.client.manage import delete_router

    cli = state(ctx)
    if not yes and not cli.json and not typer.confirm(f"delete router {name}?"):
        raise typer.Exit(1)
    admin_call(cli, lambda client: delete_router(client, name))
    emit(cli, {"deleted": name}, lambda: out.print(f"deleted router {name}", markup=False))


def token(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Router name.")]) -> None:
    """A new enrollment token for a router (a rebuilt machine, a lost key)."""
    from umbranet.client.manage import router_token

    cli = state(ctx)
    value = admin_call(cli, lambda client: router_token(client, name))
    emit(cli, {"enrollment_token": value}, lambda: out.print(value, markup=False))


def update(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Router name.")],
    cost: Annotated[
        float | None,
        typer.Option("--cost", min=0, help="Added to every path through this router (0 clears)."),
    ] = None,
    transit: Annotated[
        bool | None,
        typer.Option(
            "--transit/--no-transit",
            help="Whether paths may cross this router (--no-transit: only first or last hop).",
        ),
    ] = None,
) -> None:
    """Steer paths away from (or towards) a router: its admin cost in the mesh, and whether
    it carries transit traffic. Stored by the controller; options not given stay."""
    cli = state(ctx)
    no_transit = None if transit is None else not transit
    value = admin_call(cli, lambda client: client.set_router_cost(name, cost, no_transit))
    flag = ", no transit" if value["no_transit"] else ""
    emit(
        cli,
        value,
        lambda: out.print(f"router {name}: cost {value['cost']:g}{flag}", markup=False),
    )


def link(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="One router of the link.")],
    peer: Annotated[str, typer.Argument(help="The other router.")],
    cost: Annotated[
        float, typer.Option("--cost", min=0, help="Added to paths over this link (0 clears).")
    ],
) -> None:
    """Steer paths off one router-to-router link: its admin cost in the mesh."""
    cli = state(ctx)
    value = admin_call(cli, lambda client: client.set_link_cost(name, peer, cost))
    emit(
        cli,
        {"routers": sorted((name, peer)), "cost": value},
        lambda: out.print(f"link {name} - {peer}: cost {value:g}", markup=False),
    )


def mesh(ctx: typer.Context) -> None:
    """Show the mesh as the controller sees it: links with their path cost, each router's
    load and bound services."""
    cli = state(ctx)
    view = admin_call(cli, lambda client: client.mesh())

    def render() -> None:
        edges = view.get("edges", [])
        table(
            "Mesh links",
            ["from", "to", "cost"],
            [[e["from"], e["to"], f"{e['cost']:g}"] for e in edges],
        )
        routers = view.get("routers", {})
        table(
            "Routers",
            ["router", "circuits", "services"],
            [[n, r["circuits"], ", ".join(r["services"])] for n, r in sorted(routers.items())],
        )

    emit(cli, view, render)


def path(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="Service name.")],
    source: Annotated[str, typer.Option("--from", help="The router a dial enters at.")],
) -> None:
    """The routers a dial for SERVICE entering at a router crosses, with each hop's link
    RTT, by the controller's current routes."""
    cli = state(ctx)
    view = admin_call(cli, lambda client: client.mesh_path(service, source))

    def render() -> None:
        hops = view.get("hops", [])
        line = " -> ".join(
            "(no route)"
            if hop["router"] is None
            else (hop.get("name") or hop["router"])
            + ("" if hop.get("rtt_ms") is None else f" ({hop['rtt_ms']:.2f} ms)")
            for hop in hops
        )
        out.print(f"{service} from {source}: {line}", markup=False)

    emit(cli, view, render)
