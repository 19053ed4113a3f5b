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
        float,
        typer.Option("--cost", min=0, help="Added to every path through this router (0 clears)."),
    ],
) -> None:
    """Steer paths away from (or towards) a router: its admin cost in the mesh."""
    cli = state(ctx)
    value = admin_call(cli, lambda client: client.set_router_cost(name, cost))
    emit(
        cli,
        {"name": name, "cost": value},
        lambda: out.print(f"router {name}: cost {value:g}", markup=False),
    )
