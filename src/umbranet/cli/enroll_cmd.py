"""``umbra enroll TOKEN -o FILE``: exchange an enrollment token for an identity file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from umbranet.cli.common import emit, fail, handle_errors, out, run_async, state
from umbranet.client.controller import ControllerClient
from umbranet.pki import IdentityFile

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("enroll")(enroll)


def enroll(
    ctx: typer.Context,
    token: Annotated[
        str | None, typer.Argument(help="The enrollment token, or a file holding it.")
    ] = None,
    *,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Where to write the identity file (0600).")
    ],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    join_key: Annotated[
        str | None,
        typer.Option("--join-key", help="Enroll a new identity of its own from a join key."),
    ] = None,
    name_prefix: Annotated[
        str | None, typer.Option("--name-prefix", help="With --join-key: name prefix, e.g. web-.")
    ] = None,
) -> None:
    """Enroll this machine: keys are made here, only a CSR is sent."""
    cli = state(ctx)
    if output.exists() and not force:
        fail(cli, "file_exists", f"{output} exists; pass --force to replace it")
    if (token is None) == (join_key is None):
        fail(cli, "usage", "give either an enrollment TOKEN or --join-key KEY")
    with handle_errors(cli):
        if join_key is not None:
            # Join keys: see umbranet.cli.joinkey_cmd.
            from umbranet.cli.joinkey_cmd import enroll_with_join_key

            identity = enroll_with_join_key(join_key, name_prefix)
        else:
            assert token is not None
            text = _token_text(token)

            async def call() -> IdentityFile:
                return await ControllerClient.enroll(text)

            identity = run_async(call)
        identity.save(output)
    emit(
        cli,
        {"name": identity.name, "spiffe_id": identity.spiffe_id, "identity_file": str(output)},
        lambda: out.print(f"enrolled as {identity.spiffe_id}; identity written to {output}"),
    )


def _token_text(token: str) -> str:
    """The token itself, or the content of the file it names (tokens never contain '/')."""
    candidate = Path(token)
    if not token.startswith("ue1.") and candidate.is_file():
        return candidate.read_text().strip()
    return token.strip()
