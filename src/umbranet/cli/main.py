"""The ``umbra`` command: global options, and the command groups, each loaded when it is used.

Global options come before the command: ``umbra --home D --json identity list``. The home
directory defaults to ``~/.umbra`` (or ``$UMBRA_HOME``); ``--json`` prints machine-readable
output for scripts, and is accepted after the command as well (``umbra identity list --json``).

Start-up time is a feature: ``umbra status`` and every TAB press run this module, so it imports
only Typer and rich. Each command's module is imported by `LazyGroup` when that command runs;
``umbra --help`` and completion show the one-line help from `COMMANDS` without importing any of
them (a test checks these lines match the commands' own help).
``--log-format json`` makes the long-running commands (``controller run``, ``router run``,
``up``) log one JSON object per line (fields in docs/logging.md).
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

import umbranet
from umbranet.cli.common import DEFAULT_HOME, CliState
from umbranet.obs import LOG_FORMATS, LogFormat

__all__ = ["COMMANDS", "LazyGroup", "app", "json_first", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module under umbranet.cli, the help line `umbra --help` shows)
    "quickstart": (
        "quickstart_cmd",
        "Run controller + router, serve a demo HTTP service dark, and fetch it through the "
        "overlay.",
    ),
    "controller": ("controller_cmd", "Create and run the controller (the control plane)."),
    "identity": ("identity_cmd", "Manage identities (devices, workloads)."),
    "service": ("service_cmd", "Manage services."),
    "router": ("router_cmd", "Create, enroll and run routers."),
    "policy": ("policy_cmd", "Manage the policy document."),
    "route": ("route_cmd", "Approve subnet routes and exit nodes (network mode)."),
    "audit": ("audit_cmd", "Administrative changes and access refusals: who did what, when."),
    "enroll": ("enroll_cmd", "Enroll this machine: keys are made here, only a CSR is sent."),
    "joinkey": ("joinkey_cmd", "Join keys: one key enrolls many replicas, each its own identity."),
    "dial": ("endpoint_cmd", "Connect stdin/stdout to SERVICE through the overlay (like netcat)."),
    "host": ("endpoint_cmd", "Host SERVICE by forwarding each stream to a local address."),
    "demo": ("endpoint_cmd", "The quickstart's demo HTTP service."),
    "serve": ("serve_cmd", "Serve a Python web app (ASGI, or WSGI with --wsgi) as SERVICE."),
    "up": (
        "agent_cmd",
        "Run the agent: loopback listeners for the services you may dial, hosting for the ones "
        "you may bind, and the local API.",
    ),
    "down": (
        "agent_cmd",
        "Stop the agent recorded in the state directory and wait until it exited.",
    ),
    "status": (
        "agent_cmd",
        "Identity, routers and links, services and their local ports, live streams, counters.",
    ),
    "whois": (
        "agent_cmd",
        "Who is behind a connection the agent delivered (host: the app's peer address; client: "
        "the app's own address).",
    ),
    "ping": (
        "agent_cmd",
        "Round-trip time to SERVICE through the overlay, and the router that carried it.",
    ),
    "ip": (
        "agent_cmd",
        "This device's overlay addresses (network mode), from the agent or the controller.",
    ),
    "netcheck": (
        "netcheck_cmd",
        "UDP reachability, mapped addresses, NAT mapping behaviour, RTT to each router.",
    ),
}


# Modules whose `register(app)` adds commands to another module's sub-app when it loads.
EXTENSIONS: dict[str, tuple[str, ...]] = {"identity": ("identity_extra_cmd",)}


class LazyGroup(TyperGroup):
    """The root group: commands come from `COMMANDS`, imported on first use.

    While help or completion lists the commands, `get_command` answers with a stub carrying
    the help line; resolving a command to run it imports its module. (Contexts are typed `Any`:
    Typer carries its own copy of Click, whose classes are not public API.)
    """

    _listing = False

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        # Stubs for listing; Typer also offers "did you mean" from these names.
        self.commands = {
            name: TyperCommand(name, help=text) for name, (_, text) in COMMANDS.items()
        }

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if self._listing:
            return self.commands[cmd_name]
        return _load(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def shell_complete(self, ctx: Any, incomplete: str) -> list[Any]:
        self._listing = True
        try:
            return super().shell_complete(ctx, incomplete)
        finally:
            self._listing = False

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, json_first(args))


def json_first(args: list[str]) -> list[str]:
    """Move ``--json`` given after the command to the front, where the global option is.

    Stops at ``--``, after which everything is an argument.
    """
    end = args.index("--") if "--" in args else len(args)
    head, tail = args[:end], args[end:]
    if "--json" not in head[1:]:
        return args
    return ["--json", *(a for a in head if a != "--json"), *tail]


@functools.cache
def _load(name: str) -> Any:
    """Import the module behind `name` and build its click command (once per process)."""
    module = importlib.import_module(f"umbranet.cli.{COMMANDS[name][0]}")
    for extension in EXTENSIONS.get(name, ()):
        importlib.import_module(f"umbranet.cli.{extension}").register(module.app)
    holder = typer.Typer()
    register = getattr(module, "register", None)
    if register is not None:
        register(holder)
    else:
        holder.add_typer(module.app, name=name)
    return typer.main.get_group(holder).commands[name]


def _show_version(value: bool) -> None:
    if value:
        print(f"umbra {umbranet.__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="umbra",
    cls=LazyGroup,
    help="Umbranet: a zero-trust overlay network.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global(
    ctx: typer.Context,
    home: Annotated[
        Path,
        typer.Option(
            "--home",
            envvar="UMBRA_HOME",
            help="Home directory (controller state, admin identity).",
        ),
    ] = DEFAULT_HOME,
    json_output: Annotated[
        bool,
        typer.Option("--json", help="Print machine-readable JSON (also after the command)."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_show_version
        ),
    ] = False,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar="UMBRA_LOG_FORMAT",
            help="Logs of long-running commands: text, or json (one object per line).",
        ),
    ] = "text",
) -> None:
    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(f"use one of {', '.join(LOG_FORMATS)}", param_hint="--log-format")
    chosen: LogFormat = "json" if log_format == "json" else "text"
    ctx.obj = CliState(home=home.expanduser(), json=json_output, log_format=chosen)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
