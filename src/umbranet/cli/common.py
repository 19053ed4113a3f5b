"""What every ``umbra`` subcommand shares: the global options, the admin client, rendering.

Commands stay parse -> call -> render: they read `CliState` from the Typer context, call the
library (usually through `admin_client`), and print with `emit` / `table`. Failures the user
can fix (`ControllerError`, `HomeError`, `PkiError`, missing files) end the command with a
one-line message, a hint of what to do next where there is one, and exit code 1; with
``--json`` the error goes to stdout as JSON.

This module is imported by every command, so it imports nothing heavier than Typer and rich:
the controller client (httpx) and the PKI (cryptography) are loaded by the commands that use
them, and the error classes are recognised without importing their modules (`_known_error`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from umbranet.home_layout import ControllerHome

if TYPE_CHECKING:
    from umbranet.client.controller import ControllerClient
from umbranet.obs import LogFormat

__all__ = [
    "DEFAULT_HOME",
    "CliState",
    "admin_call",
    "admin_client",
    "emit",
    "fail",
    "hint_for",
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
    import asyncio  # 50 ms at start-up, which `--help` and `--version` never need

    return asyncio.run(factory())


@asynccontextmanager
async def admin_client(cli: CliState) -> AsyncIterator[ControllerClient]:
    """A client authenticated as the home's admin identity (``D/admin.json``).

    Renews the admin certificate when past half its lifetime and saves the renewed file, so
    an admin who uses the CLI now and then never finds their file expired.
    """
    from umbranet.client.controller import ControllerClient
    from umbranet.pki import IdentityFile

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
    except OSError as exc:
        fail(cli, "os_error", f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
    except Exception as exc:
        known = _known_error(exc)
        if known is None:
            raise
        fail(cli, *known)


# Error classes a user can act on, by module and name, with the attribute holding the message.
_USER_ERRORS = (
    ("umbranet.client.controller", "ControllerError", "message"),
    ("umbranet.home_layout", "HomeError", "message"),
    ("umbranet.pki.errors", "PkiError", "reason"),
)


def _known_error(exc: Exception) -> tuple[str, str] | None:
    """``(code, message)`` when `exc` is one of `_USER_ERRORS`.

    Looked up in `sys.modules` rather than imported: an exception of a class whose module was
    never imported cannot have been raised, and importing the controller client just to name
    its error would cost every command the httpx start-up time.
    """
    for module_name, class_name, attribute in _USER_ERRORS:
        module = sys.modules.get(module_name)
        error_class = getattr(module, class_name, None) if module is not None else None
        if isinstance(error_class, type) and isinstance(exc, error_class):
            return str(getattr(exc, "code", "error")), str(getattr(exc, attribute, exc))
    return None


# What to do next, for the failures people meet most; keyed by error code.
_HINTS = {
    "unreachable": "is the controller running? Start it with `umbra controller run` "
    "(or check the URL in the identity file)",
    "token_invalid": "pass the token itself (it starts with `ue1.`) or the path of a file "
    "holding it; check the path if you meant a file",
    "token_malformed": "pass the token itself (it starts with `ue1.`) or the path of a file "
    "holding it",
    "token_expired": "ask an admin for a new one: `umbra identity token NAME`",
    "token_used": "a token works once; ask an admin for a new one: `umbra identity token NAME`",
    "agent_not_running": "start the agent with `umbra up --identity FILE` (or pass --state-dir)",
    "not_initialised": "create one with `umbra controller init`, or pass --home",
    "cert_expired": "the identity's certificate lapsed; re-enroll it with a new token "
    "(`umbra identity token NAME` on the admin side)",
    "join_key_expired": "ask an admin for a new join key: `umbra joinkey create ...`",
    "join_key_revoked": "ask an admin for a new join key: `umbra joinkey create ...`",
    "join_key_used": "a single-use join key enrolls one replica; use `--reusable` keys for more",
}


def hint_for(code: str) -> str | None:
    """The next step for an error code, when there is a common one."""
    return _HINTS.get(code)


def fail(cli: CliState, code: str, message: str) -> NoReturn:
    hint = hint_for(code)
    if cli.json:
        error: dict[str, str] = {"code": code, "message": message}
        if hint:
            error["hint"] = hint
        print(json.dumps({"error": error}))
    else:
        # The message and hint may hold [brackets] (attributes, paths): never rich markup.
        err.print("error", style="bold red", end="")
        err.print(f" ({code}): {message}", markup=False)
        if hint:
            err.print(f"  hint: {hint}", markup=False)
    raise typer.Exit(1)


def emit(cli: CliState, value: Any, human: Callable[[], None]) -> None:
    """Print `value` as JSON with ``--json``, else run the `human` renderer."""
    if cli.json:
        print(json.dumps(_plain(value), indent=2))
    else:
        human()


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table; on a terminal it folds long cells to fit, piped it keeps one line per row.

    Cells are plain text, never rich markup, so ``[db-hosts]`` prints as itself.
    """
    cells = [[_cell(v) for v in row] for row in rows]
    piped = not out.is_terminal
    grid = Table(title=title, title_justify="left")
    for column in columns:
        grid.add_column(column, overflow="ignore" if piped else "fold", no_wrap=piped)
    for row_cells in cells:
        grid.add_row(*(Text(c) for c in row_cells))
    if piped:
        widths = [len(c) for c in columns]
        for row_cells in cells:
            widths = [max(w, len(c)) for w, c in zip(widths, row_cells, strict=False)]
        # Room for every cell, its padding and the borders, so grep and cut see whole rows; a
        # console of its own, as rich caps any print at the console's (80 column) width.
        needed = max(sum(widths) + 3 * len(widths) + 1, len(title))
        Console(file=out.file, width=needed, highlight=False).print(grid)
    else:
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
    if hasattr(type(value), "model_fields"):
        # The client's results are the shared pydantic models (umbranet.schema); duck-typed so
        # that rendering never imports pydantic for commands that print none of them.
        return _plain(value.model_dump())
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
    if isinstance(value, dict):
        # Audit details and the like: key=value, values as JSON, never a Python repr.
        return " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in value.items()) or "-"
    return str(value)
