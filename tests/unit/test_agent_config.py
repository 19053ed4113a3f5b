"""Agent configuration: stable derived ports, SERVICE=PORT overrides, a private state dir."""

from __future__ import annotations

import stat
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umbranet.agent.config import (
    DERIVED_PORT_BASE,
    DERIVED_PORT_SPAN,
    AgentConfig,
    ConfigError,
    default_state_dir,
    derived_port,
    parse_port_override,
    prepare_state_dir,
)


def test_derived_port_is_stable_and_in_its_range() -> None:
    assert derived_port("db") == 15000 + zlib.crc32(b"db") % 10000
    assert derived_port("db") == derived_port("db")


@given(st.text(min_size=1, max_size=63))
def test_derived_port_always_lands_in_range(name: str) -> None:
    assert DERIVED_PORT_BASE <= derived_port(name) < DERIVED_PORT_BASE + DERIVED_PORT_SPAN


def test_port_overrides_parse_or_say_why() -> None:
    assert parse_port_override("db=5432") == ("db", 5432)
    assert parse_port_override(" web = 8080") == ("web", 8080)
    for bad in ("db", "=5432", "db=", "db=abc", "db=0", "db=70000", "db=-1"):
        with pytest.raises(ConfigError) as caught:
            parse_port_override(bad)
        assert caught.value.code == "bad_port"


@given(st.text(max_size=40))
def test_port_override_parser_raises_only_config_errors(text: str) -> None:
    try:
        service, port = parse_port_override(text)
    except ConfigError:
        return
    assert service and 0 < port < 65536


def test_state_dir_comes_from_the_environment_or_home() -> None:
    assert default_state_dir({"UMBRA_AGENT_DIR": "/srv/agent"}) == Path("/srv/agent")
    assert default_state_dir({}) == Path("~/.umbra/agent").expanduser()


def test_state_dir_is_made_owner_only(tmp_path: Path) -> None:
    fresh = tmp_path / "a" / "agent"
    prepare_state_dir(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    prepare_state_dir(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


def test_paths_live_in_the_state_dir(tmp_path: Path) -> None:
    config = AgentConfig(identity=tmp_path / "me.json", state_dir=tmp_path)
    assert {p.parent for p in (config.socket_path, config.pidfile, config.ports_file)} == {tmp_path}


def test_the_systemd_unit_runs_umbra_up_with_the_options_it_has() -> None:
    import configparser
    import shlex

    from typer.testing import CliRunner

    from umbranet.cli.main import app

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment, method-assign]
    unit.read(Path(__file__).resolve().parents[2] / "deploy" / "umbra-agent.service")
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[1] == "up"
    assert unit["Service"]["KillSignal"] == "SIGTERM"
    help_text = CliRunner().invoke(app, ["up", "--help"], env={"COLUMNS": "200"}).output
    for option in (a for a in argv[2:] if a.startswith("--")):
        assert option in help_text
