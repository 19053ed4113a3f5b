"""The documentation stays true: the CLI reference is what the commands say, the site builds
with warnings as errors, and every `umbra` command line in the README and the docs names a
real command with real options."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.core import TyperGroup

from umbranet.cli.main import COMMANDS, _load
from umbranet.cli.reference import render

ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "deploy/kubernetes/README.md",
]
GLOBAL_OPTIONS = {
    "--home": True,
    "--json": False,
    "--version": False,
    "--log-format": True,
}  # option: takes a value


def test_cli_reference_is_generated_from_the_commands() -> None:
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == render(), "run: python -m umbranet.cli.reference > docs/cli.md"


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (.[dev])"
)
@pytest.mark.slow
def test_site_builds_without_warnings(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "policy" / "index.html").exists()


def _command_lines() -> list[tuple[str, str]]:
    """(page, line) for each `umbra ...` invocation inside a ```sh block."""
    found = []
    for page in PAGES:
        in_shell = False
        for line in page.read_text().splitlines():
            if line.startswith("```"):
                in_shell = line.strip() in ("```sh", "```bash")
                continue
            if not in_shell:
                continue
            code = line.split(" #", 1)[0]
            for part in re.split(r"&&|\|\||;|\|", code):
                words = part.strip()
                if re.match(r"(\.venv/bin/)?umbra\s", words):
                    found.append((page.name, words))
    return found


COMMAND_LINES = _command_lines()


def test_the_pages_show_commands() -> None:
    assert len(COMMAND_LINES) > 20


@pytest.mark.parametrize(
    ("page", "line"), COMMAND_LINES, ids=[f"{page}: {text}" for page, text in COMMAND_LINES]
)
def test_command_lines_name_real_commands_and_options(page: str, line: str) -> None:
    words = shlex.split(line.replace("$(", "").replace('"$', '"'))[1:]
    while words and words[0] in GLOBAL_OPTIONS:
        words = words[2:] if GLOBAL_OPTIONS[words[0]] else words[1:]
    if not words:
        return  # `umbra --version`
    assert words[0] in COMMANDS, f"{page}: no command {words[0]!r} in {line!r}"
    command = _load(words[0])
    rest = words[1:]
    while isinstance(command, TyperGroup):
        if rest and rest[0].startswith("--") and command.params:
            break  # a group whose own callback takes options (`umbra audit --limit 5`)
        # Placeholders like `history | rollback N` are fine: check the first subcommand.
        assert rest and rest[0] in command.commands, f"{page}: {line!r}"
        command = command.commands[rest[0]]
        rest = rest[1:]
    known = {opt for p in command.params for opt in p.opts} | {"--json", "--help"}
    for word in rest:
        if word.startswith("--"):
            assert word.split("=")[0] in known, f"{page}: {word} is no option of {line!r}"
