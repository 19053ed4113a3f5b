"""The CLI reference (docs/cli.md), generated from the commands themselves.

``python -m umbranet.cli.reference > docs/cli.md`` writes it; a test checks the file is what
this prints, so the reference never drifts from the commands. Every command, its help text,
its arguments and its options with their defaults, in the order ``umbra --help`` lists them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from typer.core import TyperGroup

from umbranet.cli.main import COMMANDS, _load

__all__ = ["render"]

_HEADER = """\
# CLI reference

Generated from the commands by `python -m umbranet.cli.reference > docs/cli.md`; do not edit.

Global options come before the command: `umbra [--home D] [--json] COMMAND ...`.
`--home` (or `UMBRA_HOME`, default `~/.umbra`) is where the controller's state and the admin
identity live; `--json` prints machine-readable output and is also accepted after the command.
`umbra --version` prints the version.
"""


def render() -> str:
    """The whole reference as Markdown."""
    parts = [_HEADER]
    for name in COMMANDS:
        for path, command in _walk(name, _load(name)):
            parts.append(_section(path, command))
    return "\n".join(parts)


def _walk(path: str, command: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(command, TyperGroup):
        for child_name, child in command.commands.items():
            yield from _walk(f"{path} {child_name}", child)
    else:
        yield path, command


def _section(path: str, command: Any) -> str:
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    options = [p for p in command.params if p.param_type_name == "option"]
    usage = " ".join(
        [f"umbra {path}"]
        + [_name(a) if a.required else f"[{_name(a)}]" for a in arguments]
        + (["[OPTIONS]"] if options else [])
    )
    lines = [f"## umbra {path}", "", _help(command), "", f"`{usage}`", ""]
    rows = [_argument_row(a) for a in arguments] + [_option_row(o) for o in options]
    if rows:
        lines += ["| argument or option | meaning | default |", "|---|---|---|", *rows, ""]
    return "\n".join(lines)


def _help(command: Any) -> str:
    text = (command.help or "").strip()
    # Docstrings wrap at the code's width; Markdown joins the lines of a paragraph anyway.
    return "\n".join(line.strip() for line in text.splitlines())


def _argument_row(argument: Any) -> str:
    meaning = _cell(getattr(argument, "help", None) or "")
    return f"| `{_name(argument)}` | {meaning} | {_default(argument)} |"


def _name(argument: Any) -> str:
    return str(getattr(argument, "metavar", None) or argument.name or "").upper()


def _option_row(option: Any) -> str:
    names = ", ".join(f"`{o}`" for o in (*option.opts, *getattr(option, "secondary_opts", ())))
    meaning = _cell(option.help or "")
    if option.envvar:
        envvars = option.envvar if isinstance(option.envvar, list | tuple) else [option.envvar]
        meaning += " (env: " + ", ".join(f"`{e}`" for e in envvars) + ")"
    if option.required:
        meaning += " (required)"
    return f"| {names} | {meaning} | {_default(option)} |"


def _default(param: Any) -> str:
    value = param.default
    if value is None or value in ((), []) or getattr(param, "is_flag", False):
        return ""
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


if __name__ == "__main__":
    sys.stdout.write(render())
