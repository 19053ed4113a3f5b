"""``umbra service create|update|list|delete``: define dark services and who may use them
(admin).

``--dial-attr``/``--bind-attr`` decide access only while no policy document is in force; once
one is, the policy decides, and setting them says so (a warning on stderr)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from umbranet.cli.common import (
    CliState,
    admin_call,
    admin_client,
    emit,
    err,
    fail,
    handle_errors,
    out,
    run_async,
    state,
    table,
)

if TYPE_CHECKING:
    from umbranet.client.controller import ControllerClient, ServiceInfo
    from umbranet.client.models import Intercept

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
    intercepts = _intercepts(cli, intercept or [])

    async def call() -> ServiceInfo:
        async with admin_client(cli) as client:
            if dial_attr or bind_attr:
                await _warn_if_policy_decides(client)
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


@app.command("update")
def update(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Service name.")],
    *,
    dial_attr: Annotated[
        list[str] | None,
        typer.Option("--dial-attr", help="Replace who may dial, by attribute (repeat)."),
    ] = None,
    bind_attr: Annotated[
        list[str] | None,
        typer.Option("--bind-attr", help="Replace who may host, by attribute (repeat)."),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="New host address (tcp://... or udp://...).")
    ] = None,
    no_host: Annotated[bool, typer.Option("--no-host", help="Remove the host address.")] = False,
    intercept: Annotated[
        list[str] | None,
        typer.Option("--intercept", help="Replace the intercepts, NAME:PORT (repeat)."),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            help="How routers pick among its hosts: smart, weighted, random, sticky, precedence.",
        ),
    ] = None,
    transit: Annotated[
        list[str] | None,
        typer.Option("--transit", help="Only through these routers (repeat; by name)."),
    ] = None,
    any_transit: Annotated[
        bool, typer.Option("--any-transit", help="Dials may cross any router again.")
    ] = False,
) -> None:
    """Change a service; options not given stay as they are."""
    from umbranet.client.manage import update_service

    cli = state(ctx)
    intercepts = None if intercept is None else _intercepts(cli, intercept)

    async def call() -> ServiceInfo:
        async with admin_client(cli) as client:
            if dial_attr is not None or bind_attr is not None:
                await _warn_if_policy_decides(client)
            if strategy is not None or transit is not None or any_transit:
                await client.set_service_strategy(name, strategy, transit, any_transit)
            return await update_service(
                client,
                name,
                dial_attributes=dial_attr,
                bind_attributes=bind_attr,
                host_address=host,
                clear_host_address=no_host,
                intercepts=intercepts,
            )

    with handle_errors(cli):
        service = run_async(call)
    emit(cli, service, lambda: out.print(f"updated service {service.name}", markup=False))


def _intercepts(cli: CliState, items: list[str]) -> list[Intercept]:
    from umbranet.client.models import Intercept

    intercepts: list[Intercept] = []
    for item in items:
        host_name, sep, port = item.rpartition(":")
        if not sep or not host_name or not port.isdigit():
            fail(cli, "invalid_intercept", f"--intercept {item!r} must be NAME:PORT")
        intercepts.append(Intercept(host=host_name, port=int(port)))
    return intercepts


async def _warn_if_policy_decides(client: ControllerClient) -> None:
    """Say so when a policy is in force: it, not the service's attributes, decides access."""
    from umbranet.client.controller import ControllerError

    try:
        policy = await client.get_policy()
    except ControllerError:
        return  # no policy saved (no_policy), or we may not read it: nothing to add
    err.print(
        f"warning: policy version {policy.get('version')} is in force and decides who may dial "
        "and host; --dial-attr/--bind-attr take effect only without a policy "
        "(see `umbra policy get`)",
        markup=False,
    )


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
