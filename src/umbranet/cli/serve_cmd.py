"""``umbra serve module:app --service NAME``: host a Python web app dark.

The app is imported like uvicorn does (``module:attribute``, the current directory on the
import path) and served over the overlay only: no listening socket anywhere. ASGI by default,
``--wsgi`` for WSGI apps. The app reads the caller's proven identity from the ASGI scope
extension ``umbranet`` or the WSGI environ key ``umbranet.peer``.

``--server`` picks the HTTP server that runs on each overlay stream: the built-in one
(HTTP/1.1 and WebSockets, no extra dependency), ``uvicorn`` (HTTP/1.1) or ``hypercorn``
(HTTP/1.1 and cleartext HTTP/2 with prior knowledge or h2c upgrade; ``umbranet[http2]``).
The third-party servers take ASGI apps only.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from umbranet.cli.common import fail, handle_errors, out, state

if TYPE_CHECKING:
    from collections.abc import Callable

    from umbranet.sdk import Context

__all__ = ["SERVERS", "register"]

SERVERS = ("builtin", "uvicorn", "hypercorn")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="The app to serve, as module:attribute.")],
    *,
    service: Annotated[str, typer.Option("--service", help="Service name to host.")],
    identity: Annotated[
        Path, typer.Option("--identity", "-i", envvar="UMBRA_IDENTITY", help="Identity file.")
    ],
    wsgi: Annotated[bool, typer.Option("--wsgi", help="The app is WSGI, not ASGI.")] = False,
    server: Annotated[
        str,
        typer.Option(
            "--server",
            help="HTTP server on each stream: builtin (HTTP/1.1, WebSockets), uvicorn "
            "(HTTP/1.1) or hypercorn (HTTP/1.1 and HTTP/2).",
        ),
    ] = "builtin",
) -> None:
    """Serve a Python web app (ASGI, or WSGI with --wsgi) as SERVICE. Opens no port."""
    if server not in SERVERS:
        raise typer.BadParameter(f"use one of {', '.join(SERVERS)}", param_hint="--server")
    if wsgi and server != "builtin":
        raise typer.BadParameter(
            "WSGI apps are served by the built-in server: drop --server", param_hint="--server"
        )
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
            kind = "WSGI" if wsgi else "ASGI"
            who = context.identity.spiffe_id
            announce = f"serving {target} ({kind}) as {service}, dark, as {who}"
            if server != "builtin":
                announce += f", through {server}"
                await _serve_through(server, app, context, service, lambda: out.print(announce))
                return
            builtin = (
                WsgiServer(context, service, app) if wsgi else AsgiServer(context, service, app)
            )
            async with builtin:
                out.print(announce)
                await asyncio.get_running_loop().create_future()

    with handle_errors(cli), contextlib.suppress(KeyboardInterrupt):
        try:
            run(main())
        except UmbraError as exc:
            fail(cli, exc.code, exc.reason)
        except ImportError as exc:
            extra = "http2" if server == "hypercorn" else "controller"
            fail(cli, "missing_dependency", f"{exc}: pip install 'umbranet[{extra}]'")


async def _serve_through(
    server: str, app: object, context: Context, service: str, ready: Callable[[], object]
) -> None:
    """Serve `app` with uvicorn or hypercorn on every stream of a listener for `service`;
    `ready()` once the service is bound (dials from then on reach it)."""
    listener = await context.listen(service).start()
    try:
        if server == "hypercorn":
            from umbranet.integrations.hypercorn_host import serve_hypercorn

            serving = serve_hypercorn(app, listener)
        else:
            from umbranet.integrations.uvicorn_host import serve_uvicorn

            serving = serve_uvicorn(app, listener)
        ready()
        await serving
    finally:
        await listener.close()
