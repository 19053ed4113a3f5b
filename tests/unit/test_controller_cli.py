"""The ``umbra`` CLI wiring: commands exist, init works and refuses twice, errors are clean.
(Commands that talk to a running controller are exercised in the integration test.)"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from umbranet.cli.main import app

runner = CliRunner()


def test_all_command_groups_are_registered() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("controller", "identity", "service", "router", "enroll"):
        assert command in result.output
    for group, commands in {
        "controller": ("init", "run"),
        "identity": ("create", "list", "disable", "enable", "token"),
        "service": ("create", "list", "delete"),
        "router": ("create", "list"),
    }.items():
        output = runner.invoke(app, [group, "--help"]).output
        assert all(c in output for c in commands), (group, output)


def test_controller_init_then_refuses_again(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = runner.invoke(
        app, ["--home", str(home), "--json", "controller", "init", "--trust-domain", "t.umbra"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["trust_domain"] == "t.umbra"
    assert summary["controller_url"] == "https://127.0.0.1:8443"
    assert (home / "admin.json").exists()

    again = runner.invoke(app, ["--home", str(home), "--json", "controller", "init"])
    assert again.exit_code == 1
    assert json.loads(again.output)["error"]["code"] == "already_initialised"


def test_home_from_environment(tmp_path: Path) -> None:
    result = runner.invoke(app, ["controller", "init"], env={"UMBRA_HOME": str(tmp_path / "e")})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e" / "controller" / "config.json").exists()


def test_management_without_an_admin_identity_fails_cleanly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--home", str(tmp_path), "--json", "identity", "list"])
    assert result.exit_code == 1
    assert json.loads(result.output)["error"]["code"] == "no_admin_identity"


def test_enroll_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "id.json"
    target.write_text("{}")
    result = runner.invoke(app, ["--json", "enroll", "ue1.x.y", "-o", str(target)])
    assert result.exit_code == 1
    assert json.loads(result.output)["error"]["code"] == "file_exists"


def test_enroll_with_a_malformed_token(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--json", "enroll", "garbage", "-o", str(tmp_path / "x.json")])
    assert result.exit_code == 1
    assert json.loads(result.output)["error"]["code"] == "token_invalid"
