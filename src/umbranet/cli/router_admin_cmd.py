"""``umbra router create|list``: the admin side of routers (``enroll``/``run`` live in
`router_cmd`, which the router's owner maintains)."""

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
