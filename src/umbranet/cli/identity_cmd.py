"""``umbra identity create|list|disable|enable|token``: manage identities (admin)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from umbranet.cli.common import (
    CliState,
    admin_call,
    admin_client,
    emit,
    fail,
    handle_errors,
    out,
    run_async,
    state,
    table,
    write_secret,
)
from umbranet.client.controller import CreatedIdentity, IdentityInfo

__all__ = ["app"]

app = typer.Typer(help="Manage identities (devices, workloads).", no_args_is_help=True)

OutputOption = Annotated[
    Path | None,
    typer.Option("-o", "--output", help="Write the enrollment token to this file (mode 0600)."),
]


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Identity name, e.g. alice-laptop.")],
    kind: Annotated[str, typer.Option("--kind", help="device or workload.")] = "device",
    attr: Annotated[
        list[str] | None, typer.Option("--attr", help="Attribute (repeat for several).")
    ] = None,
    output: OutputOption = None,
) -> None:
    """Create an identity and print its one-time enrollment token."""
    cli = state(ctx)
    _refuse_existing(cli, output)

    async def call() -> CreatedIdentity:
        async with admin_client(cli) as client:
            return await client.create_identity(name, kind=kind, attributes=attr or [])

    with handle_errors(cli):
        created = run_async(call)
        if output is not None:
            write_secret(output, created.enrollment_token)
    _show_created(cli, created, output)


def _refuse_existing(cli: CliState, output: Path | None) -> None:
    # Checked before calling the controller, so a token is never minted and then lost.
    if output is not None and output.exists():
        fail(cli, "file_exists", f"{output} exists; choose another file")


def _show_created(cli: CliState, created: CreatedIdentity, output: Path | None) -> None:
    identity = created.identity
    value: dict[str, object] = {"identity": identity}
    if output is None:
        value["enrollment_token"] = created.enrollment_token
    else:
        value["token_file"] = str(output)

    def human() -> None:
        if output is None:
            # The token alone on stdout, so `TOKEN=$(umbra identity create x)` works.
            out.print(created.enrollment_token, markup=False)
        else:
            out.print(f"created {identity.spiffe_id}; enrollment token written to {output}")

    emit(cli, value, human)


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List identities."""
    cli = state(ctx)

    rows = admin_call(cli, lambda client: client.list_identities())
    emit(
        cli,
        rows,
        lambda: table(
            "Identities",
            ["name", "kind", "enabled", "enrolled", "attributes", "cert expires", "spiffe id"],
            [
                [i.name, i.kind, i.enabled, i.enrolled, i.attributes, i.cert_not_after, i.spiffe_id]
                for i in rows
            ],
        ),
    )


@app.command("disable")
def disable(ctx: typer.Context, name: str) -> None:
    """Disable an identity: its tickets and API calls are refused from now on."""
    _set_enabled(ctx, name, enabled=False)


@app.command("enable")
def enable(ctx: typer.Context, name: str) -> None:
    """Enable a disabled identity again."""
    _set_enabled(ctx, name, enabled=True)


def _set_enabled(ctx: typer.Context, name: str, *, enabled: bool) -> None:
    cli = state(ctx)

    async def call() -> IdentityInfo:
        async with admin_client(cli) as client:
            if enabled:
                return await client.enable_identity(name)
            return await client.disable_identity(name)

    with handle_errors(cli):
        identity = run_async(call)
    word = "enabled" if identity.enabled else "disabled"
    emit(cli, identity, lambda: out.print(f"{identity.name}: {word}"))


@app.command("token")
def token(ctx: typer.Context, name: str, output: OutputOption = None) -> None:
    """Issue a new enrollment token for an existing identity (new device, lost key)."""
    _issue_token(ctx, name, output, revoke=False)


@app.command("revoke")
def revoke(ctx: typer.Context, name: str, output: OutputOption = None) -> None:
    """Revoke the identity's certificates (stolen key): its live streams close now. Prints a
    new enrollment token for the identity's replacement key."""
    _issue_token(ctx, name, output, revoke=True)


def _issue_token(ctx: typer.Context, name: str, output: Path | None, *, revoke: bool) -> None:
    cli = state(ctx)
    _refuse_existing(cli, output)

    async def call() -> str:
        async with admin_client(cli) as client:
            if revoke:
                return await client.revoke_certificates(name)
            return await client.new_enrollment(name)

    with handle_errors(cli):
        value = run_async(call)
        if output is not None:
            write_secret(output, value)
    if output is not None:
        emit(cli, {"token_file": str(output)}, lambda: out.print(f"token written to {output}"))
    else:
        emit(cli, {"enrollment_token": value}, lambda: out.print(value, markup=False))
