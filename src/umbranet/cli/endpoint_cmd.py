"""``umbra dial``, ``umbra host`` and ``umbra demo``: use the overlay from a shell.

`dial` is netcat through the overlay (stdin -> service -> stdout); `host` hosts a service by
forwarding every stream to a local address; `demo serve|fetch` are the quickstart's service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from umbranet.aio.runtime import run
from umbranet.cli.common import fail, handle_errors, out, state
from umbranet.sdk import Context, UmbraError

__all__ = ["register"]

IdentityOption = Annotated[Path, typer.Option("--identity", "-i", help="Identity file.")]

demo_app = typer.Typer(help="The quickstart's demo HTTP service.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("dial")(dial)
    app.command("host")(host)
    app.add_typer(demo_app, name="demo")


def dial(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="Service name.")],
    identity: IdentityOption,
) -> None:
    """Connect stdin/stdout to SERVICE through the overlay (like netcat)."""
    cli = state(ctx)

    async def main() -> None:
        async with Context.from_file(identity) as context:
            stream = await context.dial(service)
            loop = asyncio.get_running_loop()

            stdin = sys.stdin.buffer

            async def pump_in() -> None:
                while data := await loop.run_in_executor(None, os.read, stdin.fileno(), 65536):
                    stream.write(data)
                    await stream.drain()
                stream.write_eof()

            feeder = loop.create_task(pump_in())
            while data := await stream.read(65536):
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            feeder.cancel()

    with handle_errors(cli):
        try:
            run(main())
        except UmbraError as exc:
            fail(cli, exc.code, exc.reason)


def host(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="Service name.")],
    identity: IdentityOption,
    to: Annotated[str, typer.Option("--to", help="Local address, tcp://127.0.0.1:PORT.")],
) -> None:
    """Host SERVICE by forwarding each stream to a local address. Opens no port."""
    from umbranet.sdk.forward import offload, parse_tcp_address

    cli = state(ctx)
    try:
        address = parse_tcp_address(to)
    except ValueError as exc:
        fail(cli, "bad_address", str(exc))

    async def main() -> None:
        async with Context.from_file(identity) as context:
            tasks: set[asyncio.Task[None]] = set()
            async with context.listen(service) as listener:
                out.print(f"hosting {service} -> tcp://{address[0]}:{address[1]}")
                async for stream in listener:
                    task = asyncio.get_running_loop().create_task(offload(stream, *address))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

    with handle_errors(cli), contextlib.suppress(KeyboardInterrupt):
        try:
            run(main())
        except UmbraError as exc:
            fail(cli, exc.code, exc.reason)


@demo_app.command("serve")
def demo_serve(
    ctx: typer.Context,
    identity: IdentityOption,
    service: Annotated[str, typer.Option("--service")] = "demo-web",
) -> None:
    """Serve the demo HTTP service dark (no listening socket)."""
    from umbranet.demo import serve_demo

    cli = state(ctx)

    async def main() -> None:
        async with Context.from_file(identity) as context:
            print(f"serving {service} dark as {context.identity.spiffe_id}", flush=True)
            await serve_demo(context, service)

    with handle_errors(cli), contextlib.suppress(KeyboardInterrupt):
        try:
            run(main())
        except UmbraError as exc:
            fail(cli, exc.code, exc.reason)


@demo_app.command("fetch")
def demo_fetch(
    ctx: typer.Context,
    identity: IdentityOption,
    service: Annotated[str, typer.Option("--service")] = "demo-web",
    path: Annotated[str, typer.Argument()] = "/",
) -> None:
    """GET PATH from an HTTP service through the overlay and print the response."""
    from umbranet.demo import fetch

    cli = state(ctx)

    async def main() -> bytes:
        async with Context.from_file(identity) as context:
            return await fetch(context, service, path)

    with handle_errors(cli):
        try:
            sys.stdout.write(run(main()).decode("utf-8", "replace"))
        except UmbraError as exc:
            fail(cli, exc.code, exc.reason)
