"""``umbra serve module:app --service NAME``: host a Python web app dark.

The app is imported like uvicorn does (``module:attribute``, the current directory on the
import path) and served over the overlay only: no listening socket anywhere. ASGI by default,
``--wsgi`` for WSGI apps. The app reads the caller's proven identity from the ASGI scope
extension ``umbranet`` or the WSGI environ key ``umbranet.peer``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from umbranet.cli.common import fail, handle_errors, out, state

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="The app to serve, as module:attribute.")],
    service: Annotated[str, typer.Option("--service", help="Service name to host.")],
    identity: Annotated[
        Path, typer.Option("--identity", "-i", envvar="UMBRA_IDENTITY", help="Identity file.")
    ],
    wsgi: Annotated[bool, typer.Option("--wsgi", help="The app is WSGI, not ASGI.")] = False,
) -> None:
    """Serve a Python web app (ASGI, or WSGI with --wsgi) as SERVICE. Opens no port."""
    # Imported here, so `--help` and TAB completion do not pay for the SDK.
    import asyncio

    from umbranet.aio.runtime import run
    from umbranet.integrations import AsgiServer, WsgiServer, import_app
    from umbranet.sdk import Context, UmbraError

    cli = state(ctx)
    sys.path.insert(0, str(Path.cwd()))
    try:
        app = import_app(target)
    except UmbraError as exc:
        fail(cli, exc.code, exc.reason)

    async def main() -> None:
        async with Context.from_file(
            identity, state_path=os.environ.get("UMBRA_IDENTITY_STATE")
        ) as context:
            server = (
                WsgiServer(context, service, app) if wsgi else AsgiServer(context, service, app)
            )
            async with server:
                kind = "WSGI" if wsgi else "ASGI"
                who = context.identity.spiffe_id
                out.print(f"serving {target} ({kind}) as {service}, dark, as {who}")
                await asyncio.get_running_loop().create_future()

    with handle_errors(cli), contextlib.suppress(KeyboardInterrupt):
        try:
            run(main())
        except UmbraError as exc:
            fail(cli, exc.code, exc.reason)
