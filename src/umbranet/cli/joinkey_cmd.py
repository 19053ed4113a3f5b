"""``umbra joinkey create|list|revoke`` (admin), and the join-key half of ``umbra enroll``.

One join key enrolls many replicas, each as an identity of its own (``web-3f2a9c1d``...), so
replicas never share (and supersede) one certificate. ``--ephemeral`` identities are removed
by the controller once offline longer than ``--offline-after``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from umbranet.cli.common import (
    CliState,
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

if TYPE_CHECKING:
    from umbranet.client.joinkeys import JoinKeyInfo
    from umbranet.pki import IdentityFile

__all__ = ["app", "enroll_with_join_key", "parse_duration", "register"]

app = typer.Typer(
    help="Join keys: one key enrolls many replicas, each its own identity.", no_args_is_help=True
)

_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="joinkey")


def parse_duration(text: str) -> timedelta:
    """``90s``, ``10m``, ``24h``, ``7d`` or combinations like ``1d12h``."""
    parts = _DURATION.findall(text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower():
        raise ValueError(f"{text!r} is not a duration like 30s, 10m, 24h or 7d")
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))


def _duration(cli: CliState, option: str, text: str) -> int:
    try:
        return int(parse_duration(text).total_seconds())
    except ValueError as exc:
        fail(cli, "invalid_duration", f"{option}: {exc}")


@app.command("create")
def create(
    ctx: typer.Context,
    *,
    reusable: Annotated[
        bool, typer.Option("--reusable", help="Any number of replicas may use it (else once).")
    ] = False,
    ephemeral: Annotated[
        bool,
        typer.Option("--ephemeral", help="Remove its identities once offline for a while."),
    ] = False,
    offline_after: Annotated[
        str, typer.Option("--offline-after", help="With --ephemeral: how long offline.")
    ] = "10m",
    attr: Annotated[
        list[str] | None, typer.Option("--attr", help="Attribute of every identity (repeat).")
    ] = None,
    expires: Annotated[str, typer.Option("--expires", help="Lifetime of the key.")] = "24h",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the key to this file (0600).")
    ] = None,
) -> None:
    """Create a join key and print it (shown this once)."""
    from umbranet.client.joinkeys import create_join_key

    cli = state(ctx)
    if output is not None and output.exists():
        fail(cli, "file_exists", f"{output} exists; choose another file")
    lifetime = _duration(cli, "--expires", expires)
    offline = _duration(cli, "--offline-after", offline_after) if ephemeral else None

    async def call() -> tuple[JoinKeyInfo, str]:
        async with admin_client(cli) as client:
            return await create_join_key(
                client,
                reusable=reusable,
                ephemeral_seconds=offline,
                attributes=attr or [],
                expires_seconds=lifetime,
            )

    with handle_errors(cli):
        info, text = run_async(call)
        if output is not None:
            write_secret(output, text)
    value: dict[str, object] = {"key": info}
    value["key_file" if output is not None else "join_key"] = str(output) if output else text
    emit(
        cli,
        value,
        lambda: out.print(
            f"join key {info.id} written to {output}" if output else text, markup=False
        ),
    )


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List join keys (never their secrets)."""
    from umbranet.client.joinkeys import list_join_keys

    cli = state(ctx)

    async def call() -> list[JoinKeyInfo]:
        async with admin_client(cli) as client:
            return await list_join_keys(client)

    with handle_errors(cli):
        rows = run_async(call)
    emit(
        cli,
        rows,
        lambda: table(
            "Join keys",
            ["id", "reusable", "ephemeral", "attributes", "uses", "expires", "revoked"],
            [
                [
                    k.id,
                    k.reusable,
                    f"{k.ephemeral_seconds}s" if k.ephemeral_seconds else "no",
                    k.attributes,
                    k.uses,
                    k.expires_at,
                    k.revoked_at,
                ]
                for k in rows
            ],
        ),
    )


@app.command("revoke")
def revoke(ctx: typer.Context, key_id: Annotated[str, typer.Argument(help="Key id.")]) -> None:
    """Stop a join key from enrolling more replicas (those it enrolled stay)."""
    from umbranet.client.joinkeys import revoke_join_key

    cli = state(ctx)

    async def call() -> JoinKeyInfo:
        async with admin_client(cli) as client:
            return await revoke_join_key(client, key_id)

    with handle_errors(cli):
        info = run_async(call)
    emit(cli, info, lambda: out.print(f"join key {info.id} revoked", markup=False))


def enroll_with_join_key(join_key: str, name_prefix: str | None) -> IdentityFile:
    """For ``umbra enroll --join-key``: the key itself or a file holding it."""
    from umbranet.client.joinkeys import enroll_with_join_key as enroll

    candidate = Path(join_key)
    if not join_key.startswith("ujk1.") and candidate.is_file():
        join_key = candidate.read_text().strip()

    async def call() -> IdentityFile:
        return await enroll(join_key, name_prefix=name_prefix)

    return run_async(call)
