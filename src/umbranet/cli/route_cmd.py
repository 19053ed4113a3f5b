"""``umbra route list|approve|unapprove`` (admin): subnet routes and exit nodes that
identities advertise (``umbra up --tun --advertise-routes``, ``--advertise-exit-node``).

An advertised route counts once approved: here, by an admin, or by the policy's
``autoApprovers`` (shown as ``policy``).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from umbranet.cli.common import admin_call, emit, out, state, table

__all__ = ["app"]

app = typer.Typer(help="Approve subnet routes and exit nodes (network mode).", no_args_is_help=True)


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """Every advertised route and who approved it (admin:<who>, policy, or nobody yet)."""
    cli = state(ctx)
    rows: list[Any] = admin_call(cli, lambda client: client.network_routes())
    emit(
        cli,
        rows,
        lambda: table(
            "Routes",
            ["identity", "prefix", "exit node", "approved", "advertised"],
            [
                [
                    r["identity"],
                    r["prefix"],
                    "yes" if r["exit_node"] else "",
                    r["approved"] or "-",
                    r["advertised_at"],
                ]
                for r in rows
            ],
        ),
    )


@app.command("approve")
def approve(
    ctx: typer.Context,
    identity: Annotated[str, typer.Argument(help="The advertising identity.")],
    prefixes: Annotated[
        list[str], typer.Argument(help="Advertised prefixes, or 'exit' for its exit routes.")
    ],
) -> None:
    """Approve routes an identity advertises: clients policy allows get them."""
    _approve(ctx, identity, prefixes, approve=True)


@app.command("unapprove")
def unapprove(
    ctx: typer.Context,
    identity: Annotated[str, typer.Argument(help="The advertising identity.")],
    prefixes: Annotated[list[str], typer.Argument(help="Prefixes, or 'exit'.")],
) -> None:
    """Withdraw an admin's approval (routes the policy auto-approves stay approved)."""
    _approve(ctx, identity, prefixes, approve=False)


def _approve(ctx: typer.Context, identity: str, prefixes: list[str], *, approve: bool) -> None:
    cli = state(ctx)
    done = admin_call(cli, lambda client: client.approve_routes(identity, prefixes, approve))
    word = "approved" if approve else "no longer approved"
    emit(cli, done, lambda: out.print(f"{identity}: {', '.join(done['prefixes'])} {word}"))
