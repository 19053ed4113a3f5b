"""``umbra router create|list``: the admin side of routers (``enroll``/``run`` live in
`router_cmd`, which the router's owner maintains)."""

from __future__ import annotations

from typing import Annotated

import typer

from umbranet.aio.controller_client import CreatedRouter, RouterInfo
from umbranet.cli.common import admin_client, emit, handle_errors, out, run_async, state, table

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

    async def call() -> CreatedRouter:
        async with admin_client(cli) as client:
            return await client.create_router(name)

    with handle_errors(cli):
        created = run_async(call)
    emit(cli, created, lambda: out.print(created.enrollment_token, markup=False))


def list_(ctx: typer.Context) -> None:
    """List routers and where they listen."""
    cli = state(ctx)

    async def call() -> list[RouterInfo]:
        async with admin_client(cli) as client:
            return await client.routers()

    with handle_errors(cli):
        rows = run_async(call)
    emit(
        cli,
        rows,
        lambda: table(
            "Routers",
            ["name", "address", "last seen", "spiffe id"],
            [[r.name, r.address, r.last_seen, r.spiffe_id] for r in rows],
        ),
    )
