"""The ``umbra`` root command: lazy command groups, ``--json`` anywhere, ``--version``, plain
text output (no rich markup eating ``[brackets]``), tables that keep rows whole when piped, and
error messages that say what to do next."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

import umbranet
from umbranet.cli import common
from umbranet.cli.agent_cmd import whois_line
from umbranet.cli.main import COMMANDS, _load, app, json_first

runner = CliRunner()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_line_matches_the_command(name: str) -> None:
    # `umbra --help` shows COMMANDS' lines without importing the modules: they must not drift.
    assert _load(name).get_short_help_str(limit=300) == COMMANDS[name][1]


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    for name in COMMANDS:
        assert f" {name} " in result.output, name


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"umbra {umbranet.__version__}"


def test_json_after_the_command(tmp_path: Path) -> None:
    for args in (
        ["--json", "identity", "list"],
        ["identity", "list", "--json"],
        ["identity", "--json", "list"],
    ):
        result = runner.invoke(app, ["--home", str(tmp_path), *args])
        assert result.exit_code == 1
        assert json.loads(result.output)["error"]["code"] == "no_admin_identity", args


def test_json_after_an_agent_command(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--state-dir", str(tmp_path), "--json"])
    assert result.exit_code == 1
    error = json.loads(result.output)["error"]
    assert error["code"] == "agent_not_running"
    assert "umbra up" in error["hint"]


@given(st.lists(st.sampled_from(["a", "b", "--json", "--", "-x"]), max_size=8))
def test_json_first_moves_only_the_flag_before_the_separator(args: list[str]) -> None:
    moved = json_first(args)
    end = args.index("--") if "--" in args else len(args)
    # Everything from `--` on is untouched, and the other arguments keep their order.
    assert moved[len(moved) - (len(args) - end) :] == args[end:]
    head = moved[: len(moved) - (len(args) - end)]
    assert [a for a in head if a != "--json"] == [a for a in args[:end] if a != "--json"]
    if "--json" in args[1:end]:
        assert head[0] == "--json"
        assert head.count("--json") == 1


def test_unknown_command_suggests_the_close_one() -> None:
    result = runner.invoke(app, ["idnetity"])
    assert result.exit_code != 0
    assert "identity" in result.output


def test_whois_line_keeps_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    data = {
        "addr": "127.0.0.1:5",
        "name": "web-1",
        "spiffe_id": "spiffe://t.umbra/workload/web-1",
        "attributes": ["db-hosts"],
        "direction": "host",
        "service": "db",
        "router": "r1",
    }
    common.out.print(whois_line(data), markup=False)
    assert "attributes [db-hosts]" in capsys.readouterr().out


def test_table_keeps_rows_whole_when_piped(capsys: pytest.CaptureFixture[str]) -> None:
    long = "spiffe://a-rather-long-trust-domain.umbra/workload/" + "x" * 120
    common.table("Identities", ["name", "attributes", "spiffe id"], [["w", ["[db]"], long]])
    lines = capsys.readouterr().out.splitlines()
    row = [line for line in lines if " w " in line]
    assert len(row) == 1 and long in row[0] and "[db]" in row[0]


def test_errors_name_the_next_step(tmp_path: Path) -> None:
    args = ["--home", str(tmp_path), "--json", "enroll", "ue1.nope", "-o", "x"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    error = json.loads(result.output)["error"]
    assert error["code"] == "token_invalid"
    assert "ue1." in error["hint"]


def test_error_text_is_never_markup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit):
        common.fail(common.CliState(home=tmp_path), "bad", "attribute [db-hosts] is unknown")
    assert "[db-hosts]" in capsys.readouterr().err


def test_no_controller_running_says_how_to_start_it(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from tests.conftest import free_port
    from umbranet.controller.home import init_home

    init_home(tmp_path / "home", datetime.now(UTC), address=f"127.0.0.1:{free_port()}")
    result = runner.invoke(app, ["--home", str(tmp_path / "home"), "identity", "list", "--json"])
    assert result.exit_code == 1
    error = json.loads(result.output)["error"]
    assert error["code"] == "unreachable"
    assert "umbra controller run" in error["hint"]
