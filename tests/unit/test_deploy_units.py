"""The systemd units in deploy/ run real commands with real options, as an unprivileged user,
with the same hardening, and may write only where their commands keep state."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest
import typer

from umbranet.cli.main import COMMANDS, _load

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
# What every unit must say, because none of the three needs more: no privilege, a read-only
# system, owner-only files.
HARDENING = {
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "UMask": "0077",
    "KillSignal": "SIGTERM",
}
GLOBAL_OPTIONS = {"--home", "--log-format"}  # options of `umbra` itself, each with a value


def _unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment, method-assign]
    unit.read(path)
    return unit


def _command(argv: list[str]) -> tuple[typer.core.TyperCommand, list[str], list[str]]:
    """(click command, its words, the global words before it) for ``umbra ARGV``."""
    before: list[str] = []
    while argv and argv[0] in GLOBAL_OPTIONS:
        before += argv[:2]
        argv = argv[2:]
    assert argv and argv[0] in COMMANDS, argv
    command = _load(argv[0])
    rest = argv[1:]
    if isinstance(command, typer.core.TyperGroup):
        assert rest and rest[0] in command.commands, argv
        command = command.commands[rest[0]]
        rest = rest[1:]
    return command, rest, before


def test_there_is_a_unit_for_every_long_running_part() -> None:
    assert {p.name for p in UNITS} >= {
        "umbra-agent.service",
        "umbra-controller.service",
        "umbra-router.service",
    }


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_execstart_is_a_real_command_with_its_real_options(path: Path) -> None:
    service = _unit(path)["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/umbra")
    command, rest, _ = _command(argv[1:])
    known = {opt for p in command.params for opt in p.opts}
    given = {word for word in rest if word.startswith("-")}
    assert given <= known, f"{path.name}: {sorted(given - known)} are not options of the command"
    required = [p for p in command.params if p.required]
    for param in required:
        assert set(param.opts) & given, f"{path.name}: {param.opts[0]} is required"


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_units_run_unprivileged_and_hardened(path: Path) -> None:
    service = _unit(path)["Service"]
    assert service.get("User") not in (None, "", "root", "0")
    for key, value in HARDENING.items():
        assert service.get(key) == value, f"{path.name}: {key}={service.get(key)!r}"
    assert set(service["RestrictAddressFamilies"].split()) <= {"AF_UNIX", "AF_INET", "AF_INET6"}


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_every_path_the_command_uses_is_in_its_writable_state_directory(path: Path) -> None:
    service = _unit(path)["Service"]
    state = Path("/var/lib") / service["StateDirectory"]
    assert service["ReadWritePaths"].split() == [str(state)]
    words = shlex.split(service["ExecStart"])[1:]
    paths = [Path(word) for word in words if word.startswith("/")]
    assert paths, "the state location must be explicit in ExecStart"
    for used in paths:
        assert used == state or state in used.parents, f"{path.name}: {used} is outside {state}"
    for line in service.get("Environment", "").split():
        name, _, value = line.partition("=")
        if value.startswith("/"):
            assert Path(value) == state, f"{path.name}: {name}={value}"
