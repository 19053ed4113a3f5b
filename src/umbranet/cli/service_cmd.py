"""``umbra service create|list|delete``: define dark services and who may use them (admin)."""

from __future__ import annotations

from typing import Annotated

import typer

from umbranet.aio.controller_client import Intercept, ServiceInfo
from umbranet.cli.common import (
    admin_call,
    admin_client,
    emit,
    fail,
    handle_errors,
    out,
    run_async,
    state,
    table,
)

__all__ = ["app"]

app = typer.Typer(help="Manage services.", no_args_is_help=True)


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Service name, e.g. db.")],
    *,
    dial_attr: Annotated[
        list[str] | None,
        typer.Option("--dial-attr", help="Identities with this attribute may dial (repeat)."),
    ] = None,
    bind_attr: Annotated[
        list[str] | None,
        typer.Option("--bind-attr", help="Identities with this attribute may host (repeat)."),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host", help="Where the hosting side forwards: tcp://127.0.0.1:PORT or udp://..."
        ),
    ] = None,
    intercept: Annotated[
        list[str] | None,
        typer.Option("--intercept", help="NAME:PORT clients reach the service at (repeat)."),
    ] = None,
) -> None:
    """Create a service."""
    cli = state(ctx)
    intercepts: list[Intercept] = []
    for item in intercept or []:
        host_name, sep, port = item.rpartition(":")
        if not sep or not host_name or not port.isdigit():
            fail(cli, "invalid_intercept", f"--intercept {item!r} must be NAME:PORT")
        intercepts.append(Intercept(host_name, int(port)))

    async def call() -> ServiceInfo:
        async with admin_client(cli) as client:
            return await client.create_service(
                name,
                dial_attributes=dial_attr or [],
                bind_attributes=bind_attr or [],
                host_address=host,
                intercepts=intercepts,
            )

    with handle_errors(cli):
        service = run_async(call)
    emit(cli, service, lambda: out.print(f"created service {service.name}"))


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List services."""
    cli = state(ctx)

    rows = admin_call(cli, lambda client: client.list_services())
    emit(
        cli,
        rows,
        lambda: table(
            "Services",
            ["name", "dial", "bind", "host", "intercepts"],
            [
                [
                    s.name,
                    s.dial_attributes,
                    s.bind_attributes,
                    s.host_address,
                    [f"{i.host}:{i.port}" for i in s.intercepts],
                ]
                for s in rows
            ],
        ),
    )


@app.command("delete")
def delete(ctx: typer.Context, name: str) -> None:
    """Delete a service."""
    cli = state(ctx)

    async def call() -> None:
        async with admin_client(cli) as client:
            await client.delete_service(name)

    with handle_errors(cli):
        run_async(call)
    emit(cli, {"deleted": name}, lambda: out.print(f"deleted service {name}"))
