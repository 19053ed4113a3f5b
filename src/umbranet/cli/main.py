"""The ``umbra`` command: global options and the sub-apps, one file per command group.

Global options come before the command: ``umbra --home D --json identity list``. The home
directory defaults to ``~/.umbra`` (or ``$UMBRA_HOME``); ``--json`` prints machine-readable
output for scripts; ``--log-format json`` makes the long-running commands (``controller run``,
``router run``, ``up``) log one JSON object per line (fields in docs/logging.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from umbranet.cli import (
    agent_cmd,
    controller_cmd,
    endpoint_cmd,
    enroll_cmd,
    identity_cmd,
    policy_cmd,
    quickstart_cmd,
    router_admin_cmd,
    router_cmd,
    serve_cmd,
    service_cmd,
)
from umbranet.cli.common import DEFAULT_HOME, CliState
from umbranet.obs import LOG_FORMATS, LogFormat

__all__ = ["app", "main"]

app = typer.Typer(
    name="umbra",
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
        bool, typer.Option("--json", help="Print machine-readable JSON.")
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


app.add_typer(controller_cmd.app, name="controller")
app.add_typer(identity_cmd.app, name="identity")
app.add_typer(service_cmd.app, name="service")
router_admin_cmd.register(router_cmd.app)
app.add_typer(router_cmd.app, name="router")
enroll_cmd.register(app)
quickstart_cmd.register(app)
endpoint_cmd.register(app)
agent_cmd.register(app)
serve_cmd.register(app)
policy_cmd.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
