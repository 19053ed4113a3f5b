"""Quickstart's second run: a busy port or a directory made with another port is refused up
front with the way out, ``--reset`` deletes only a quickstart network, and the hints name an
``umbra`` the user's shell can run."""

from __future__ import annotations

import os
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import free_port
from umbranet.cli.main import app
from umbranet.cli.quickstart_cmd import umbra_command
from umbranet.controller.home import init_home
from umbranet.quickstart import Quickstart, QuickstartError, port_in_use, reset

runner = CliRunner()


def test_port_in_use() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert port_in_use(server.getsockname()[1])
    assert not port_in_use(free_port())


def test_a_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        network = Quickstart(tmp_path / "net", router_port=busy, controller_port=free_port())
        with pytest.raises(QuickstartError, match="--router-port"):
            network.start_core()
        assert network.children == []  # no controller left running in the background
        result = runner.invoke(
            app, ["quickstart", "--dir", str(tmp_path / "cli"), "--controller-port", str(busy)]
        )
    assert result.exit_code == 1
    assert f"port {busy}" in result.output and "--controller-port" in result.output


def test_a_network_made_with_another_controller_port_says_which(tmp_path: Path) -> None:
    root = tmp_path / "net"
    made_with = free_port()
    init_home(root, datetime.now(UTC), address=f"127.0.0.1:{made_with}")
    network = Quickstart(root, router_port=free_port(), controller_port=made_with + 1)
    with pytest.raises(QuickstartError, match=f"--controller-port {made_with}, or --reset"):
        network.start_core()


def test_reset_deletes_only_a_quickstart_network(tmp_path: Path) -> None:
    assert reset(tmp_path / "missing") is False
    root = tmp_path / "net"
    init_home(root, datetime.now(UTC))
    assert reset(root) is True and not root.exists()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("...")
    with pytest.raises(QuickstartError, match="not deleting"):
        reset(precious)
    assert (precious / "thesis.tex").exists()


def test_hints_name_an_umbra_the_shell_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (Path(sys.executable).parent / "umbra").exists():
        pytest.skip("no umbra script beside this Python (umbranet is not installed in it)")
    monkeypatch.setenv("PATH", "")
    command = umbra_command()
    assert command.endswith("umbra") and command != "umbra"
    assert os.path.exists(command)
