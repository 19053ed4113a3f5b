"""``umbra identity show|update|delete``: the identity commands that read one identity or
change what exists. They join the ``identity`` sub-app of `umbranet.cli.identity_cmd` when it
is loaded (see `umbranet.cli.main`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from umbranet.cli.common import admin_client, emit, fail, handle_errors, out, run_async, state

if TYPE_CHECKING:
    from umbranet.client.models import IdentityInfo

__all__ = ["register"]


def register(identity_app: typer.Typer) -> None:
    identity_app.command("show")(show)
    identity_app.command("update")(update)
    identity_app.command("delete")(delete)


def show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Identity name.")]) -> None:
    """Show one identity: kind, attributes, enrollment, certificate expiry."""
    cli = state(ctx)

    async def call() -> IdentityInfo:
        async with admin_client(cli) as client:
            return await client.get_identity(name)

    with handle_errors(cli):
        info = run_async(call)

    def human() -> None:
        for label, value in (
            ("name", info.name),
            ("kind", info.kind),
            ("spiffe id", info.spiffe_id),
            ("attributes", ", ".join(info.attributes) or "-"),
            ("enabled", "yes" if info.enabled else "no"),
            ("enrolled", "yes" if info.enrolled else "no"),
            ("cert expires", info.cert_not_after or "-"),
        ):
            out.print(f"{label:<13}{value}", markup=False)

    emit(cli, info, human)


def update(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Identity name.")],
    *,
    attr: Annotated[
        list[str] | None, typer.Option("--attr", help="Replace the attributes (repeat).")
    ] = None,
    add_attr: Annotated[
        list[str] | None, typer.Option("--add-attr", help="Add an attribute (repeat).")
    ] = None,
    remove_attr: Annotated[
        list[str] | None, typer.Option("--remove-attr", help="Remove an attribute (repeat).")
    ] = None,
    clear_attrs: Annotated[
        bool, typer.Option("--clear-attrs", help="Remove every attribute.")
    ] = False,
) -> None:
    """Change an identity's attributes; access follows at once (live streams included)."""
    from umbranet.client.manage import update_identity

    cli = state(ctx)
    if attr is None and not (add_attr or remove_attr or clear_attrs):
        fail(cli, "usage", "give --attr, --add-attr, --remove-attr or --clear-attrs")
    replace = [] if clear_attrs else attr

    async def call() -> IdentityInfo:
        async with admin_client(cli) as client:
            return await update_identity(
                client, name, attributes=replace, add=add_attr or [], remove=remove_attr or []
            )

    with handle_errors(cli):
        info = run_async(call)
    emit(
        cli,
        info,
        lambda: out.print(
            f"{info.name}: attributes {', '.join(info.attributes) or '(none)'}", markup=False
        ),
    )


def delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Identity name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an identity: its certificate is refused and its streams close."""
    from umbranet.client.manage import delete_identity

    cli = state(ctx)
    if not yes and not cli.json and not typer.confirm(f"delete identity {name}?"):
        raise typer.Exit(1)

    async def call() -> None:
        async with admin_client(cli) as client:
            await delete_identity(client, name)

    with handle_errors(cli):
        run_async(call)
    emit(cli, {"deleted": name}, lambda: out.print(f"deleted identity {name}", markup=False))
