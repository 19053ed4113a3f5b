"""`umbra` client commands start fast: they never import the controller's stack or gRPC.

Each case runs the CLI in a fresh interpreter (an import, once made, stays in `sys.modules`)
and reports which of the heavy packages it loaded. The commands are really run, to the point
where they fail for want of a controller, agent or identity file, so the imports inside the
command bodies count too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# What a client command must not load: the controller's store, migrations and web stack, and
# the agent's Workload API server. (Not pydantic: Typer itself builds commands with it.)
HEAVY = ("sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn", "grpc")
# `umbra --help` (and every TAB press) needs neither the network client nor the crypto library.
HELP_ONLY = (*HEAVY, "httpx", "cryptography", "umbranet.sdk", "umbranet.aio")

_RUNNER = """
import json, sys
from umbranet.cli.main import app
try:
    app(sys.argv[1:], prog_name="umbra")
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} | set(sys.modules))))
"""


def _loaded(args: list[str], tmp_path: Path) -> set[str]:
    env = {"UMBRA_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    last = result.stdout.strip().splitlines()[-1]
    return set(json.loads(last))


def test_help_loads_no_network_or_crypto_code(tmp_path: Path) -> None:
    loaded = _loaded(["--help"], tmp_path)
    assert not loaded & set(HELP_ONLY), sorted(loaded & set(HELP_ONLY))
    # No command module was imported to list the commands.
    assert not any(m.endswith("_cmd") for m in loaded), sorted(m for m in loaded if "_cmd" in m)


@pytest.mark.parametrize(
    "args", [["dial", "--help"], ["serve", "--help"], ["demo", "fetch", "--help"]], ids=" ".join
)
def test_endpoint_command_help_loads_no_sdk(args: list[str], tmp_path: Path) -> None:
    loaded = _loaded(args, tmp_path)
    assert not loaded & set(HELP_ONLY), sorted(loaded & set(HELP_ONLY))


@pytest.mark.parametrize(
    "args",
    [
        ["dial", "--help"],
        ["enroll", "--help"],
        ["dial", "db", "--identity", "missing.json"],
        ["enroll", "ue1.not-a-token", "-o", "out.json"],
        ["--version"],
    ],
    ids=" ".join,
)
def test_client_commands_load_no_controller_stack(args: list[str], tmp_path: Path) -> None:
    loaded = _loaded(args, tmp_path)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.parametrize(
    "args",
    [["status"], ["whois", "127.0.0.1:5"], ["ping", "db"], ["up", "--help"]],
    ids=" ".join,
)
def test_agent_client_commands_load_no_grpc(args: list[str], tmp_path: Path) -> None:
    loaded = _loaded([*args[:1], "--state-dir", str(tmp_path / "agent"), *args[1:]], tmp_path)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.parametrize(
    "args",
    [["status"], ["whois", "127.0.0.1:5"], ["ping", "db"]],
    ids=" ".join,
)
def test_agent_client_commands_load_no_controller_stack(args: list[str], tmp_path: Path) -> None:
    loaded = _loaded([*args[:1], "--state-dir", str(tmp_path / "agent"), *args[1:]], tmp_path)
    heavy = set(HEAVY) - {"grpc"}
    assert not loaded & heavy, sorted(loaded & heavy)


def test_tab_completion_of_commands_loads_no_command_module(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
        "_UMBRA_COMPLETE": "complete_bash",
        "COMP_WORDS": "umbra sta",
        "COMP_CWORD": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", _RUNNER],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    # The completion words come first (no newline after them), then the runner's module list.
    completions, bracket, modules = result.stdout.strip().partition("[")
    assert completions.split() == ["status"]
    modules = bracket + modules
    loaded = set(json.loads(modules))
    assert not any(m.endswith("_cmd") for m in loaded)
    assert not loaded & set(HELP_ONLY)
