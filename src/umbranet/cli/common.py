"""What every ``umbra`` subcommand shares: the global options, the admin client, rendering.

Commands stay parse -> call -> render: they read `CliState` from the Typer context, call the
library (usually through `admin_client`), and print with `emit` / `table`. Failures the user
can fix (`ControllerError`, `HomeError`, `PkiError`, missing files) end the command with a
one-line message and exit code 1; with ``--json`` the error goes to stdout as JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from umbranet.aio.controller_client import ControllerClient, ControllerError
from umbranet.controller.home import ControllerHome, HomeError
from umbranet.obs import LogFormat
from umbranet.pki import IdentityFile, PkiError

__all__ = [
    "DEFAULT_HOME",
    "CliState",
    "admin_call",
    "admin_client",
    "emit",
    "fail",
    "handle_errors",
    "run_async",
    "state",
    "table",
    "write_secret",
]

T = TypeVar("T")

DEFAULT_HOME = Path("~/.umbra")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass(frozen=True, slots=True)
class CliState:
    """The global options: where the home directory is, whether to print JSON, and how the
    long-running commands (controller, router, agent) write their logs."""

    home: Path
    json: bool = False
    log_format: LogFormat = "text"

    @property
    def admin_file(self) -> Path:
        return ControllerHome(self.home).admin_file


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if isinstance(obj, CliState):
        return obj
    return CliState(home=DEFAULT_HOME.expanduser())


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(factory())


@asynccontextmanager
async def admin_client(cli: CliState) -> AsyncIterator[ControllerClient]:
    """A client authenticated as the home's admin identity (``D/admin.json``).

    Renews the admin certificate when past half its lifetime and saves the renewed file, so
    an admin who uses the CLI now and then never finds their file expired.
    """
    path = cli.admin_file
    if not path.exists():
        fail(
            cli,
            "no_admin_identity",
            f"{path} does not exist; run `umbra controller init` or pass --home",
        )
    identity = IdentityFile.load(path)
    async with ControllerClient(identity) as client:
        renewed = await client.renew_if_due(datetime.now(UTC))
        if renewed is not None:
            renewed.save(path)
        yield client


def admin_call(cli: CliState, call: Callable[[ControllerClient], Awaitable[T]]) -> T:
    """One call as the home's admin; errors a user can act on end the command (exit 1)."""

    async def run() -> T:
        async with admin_client(cli) as client:
            return await call(client)

    with handle_errors(cli):
        return run_async(run)


@contextmanager
def handle_errors(cli: CliState) -> Iterator[None]:
    """Turn the errors a user can act on into a message and exit code 1."""
    try:
        yield
    except ControllerError as exc:
        fail(cli, exc.code, exc.message)
    except HomeError as exc:
        fail(cli, exc.code, exc.message)
    except PkiError as exc:
        fail(cli, exc.code, exc.reason)
    except OSError as exc:
        fail(cli, "os_error", f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))


def fail(cli: CliState, code: str, message: str) -> NoReturn:
    if cli.json:
        print(json.dumps({"error": {"code": code, "message": message}}))
    else:
        err.print(f"[bold red]error[/] ({code}): {message}", markup=True)
    raise typer.Exit(1)


def emit(cli: CliState, value: Any, human: Callable[[], None]) -> None:
    """Print `value` as JSON with ``--json``, else run the `human` renderer."""
    if cli.json:
        print(json.dumps(_plain(value), indent=2))
    else:
        human()


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    grid = Table(title=title, title_justify="left")
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*(_cell(v) for v in row))
    out.print(grid)


def write_secret(path: Path, text: str, *, force: bool = False) -> None:
    """Write a secret (a token) with mode 0600, refusing to overwrite unless `force`."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text if text.endswith("\n") else text + "\n")


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)
