"""``umbra dial``, ``umbra host`` and ``umbra demo``: use the overlay from a shell.

`dial` is netcat through the overlay (stdin -> service -> stdout); `host` hosts a service by
forwarding every stream to a local address; `demo serve|fetch` are the quickstart's service.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, TypeVar

import typer

from umbranet.cli.common import CliState, fail, handle_errors, out, state

if TYPE_CHECKING:
    from umbranet.sdk import Context, Stream

# The SDK (and asyncio with it) is imported by the commands when they run, so `--help` and
# TAB completion do not pay for it.

__all__ = ["pipe_stdio", "register"]

T = TypeVar("T")

IdentityOption = Annotated[
    Path, typer.Option("--identity", "-i", envvar="UMBRA_IDENTITY", help="Identity file.")
]

demo_app = typer.Typer(help="The quickstart's demo HTTP service.", no_args_is_help=True)


def _run(cli: CliState, main: Coroutine[Any, Any, T]) -> T:
    """Run `main`; overlay refusals end the command with their code and reason."""
    from umbranet.aio.runtime import run
    from umbranet.sdk import UmbraError

    with handle_errors(cli):
        try:
            return run(main)
        except UmbraError as exc:
            fail(cli, exc.code, exc.reason)


def _run_foreground(cli: CliState, main: Coroutine[Any, Any, None]) -> None:
    """`_run` for commands that serve until Ctrl-C."""
    with contextlib.suppress(KeyboardInterrupt):
        _run(cli, main)


def _context(identity: Path) -> Context:
    """The SDK context for `identity`; renewals go to ``$UMBRA_IDENTITY_STATE`` when set."""
    from umbranet.sdk import Context

    return Context.from_file(identity, state_path=os.environ.get("UMBRA_IDENTITY_STATE"))


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
        async with _context(identity) as context:
            stream = await context.dial(service)
            await pipe_stdio(stream, sys.stdin.buffer.fileno(), sys.stdout.buffer)

    _run(cli, main())


async def pipe_stdio(stream: Stream, stdin_fd: int, stdout: BinaryIO) -> None:
    """Copy `stdin_fd` to the stream and the stream to `stdout` until the *stream* ends.

    stdin is read by a daemon thread, not the loop's executor: a read blocked on a terminal
    would otherwise keep the process alive after the far side closed (the executor is joined
    at exit). Bounded: at most four chunks wait between the thread and the stream.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue()
    room = threading.Semaphore(4)

    def read_stdin() -> None:
        while True:
            room.acquire()
            try:
                data = os.read(stdin_fd, 65536)
            except OSError:
                data = b""
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, data)
            except RuntimeError:
                return  # the loop is closed: the command is over
            if not data:
                return

    async def pump_in() -> None:
        while data := await chunks.get():
            room.release()
            stream.write(data)
            await stream.drain()
        stream.write_eof()

    threading.Thread(target=read_stdin, name="umbra-dial-stdin", daemon=True).start()
    feeder = loop.create_task(pump_in())
    try:
        while data := await stream.read(65536):
            stdout.write(data)
            stdout.flush()
    finally:
        feeder.cancel()


def host(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="Service name.")],
    identity: IdentityOption,
    to: Annotated[str, typer.Option("--to", help="Local address, tcp://127.0.0.1:PORT.")],
) -> None:
    """Host SERVICE by forwarding each stream to a local address. Opens no port."""
    import asyncio

    from umbranet.sdk.forward import offload, parse_tcp_address

    cli = state(ctx)
    try:
        address = parse_tcp_address(to)
    except ValueError as exc:
        fail(cli, "bad_address", str(exc))

    async def main() -> None:
        async with _context(identity) as context:
            tasks: set[asyncio.Task[None]] = set()
            async with context.listen(service) as listener:
                out.print(f"hosting {service} -> tcp://{address[0]}:{address[1]}")
                async for stream in listener:
                    task = asyncio.get_running_loop().create_task(offload(stream, *address))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

    _run_foreground(cli, main())


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
        async with _context(identity) as context:
            print(f"serving {service} dark as {context.identity.spiffe_id}", flush=True)
            await serve_demo(context, service)

    _run_foreground(cli, main())


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
        async with _context(identity) as context:
            return await fetch(context, service, path)

    sys.stdout.write(_run(cli, main()).decode("utf-8", "replace"))
