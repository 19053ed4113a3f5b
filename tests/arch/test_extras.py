"""Install extras cover what each part imports: ``pip install umbranet`` gives a working SDK
without a web framework, and each extra brings what its part needs."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "umbranet"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# Import name -> the distribution that provides it.
DISTRIBUTION = {
    "cryptography": "cryptography",
    "uvloop": "uvloop",
    "httpx": "httpx",
    "httpcore": "httpx",
    "h11": "h11",
    "typer": "typer",
    "rich": "rich",
    "grpc": "grpcio",
    "google": "protobuf",
    "fastapi": "fastapi",
    "starlette": "fastapi",
    "uvicorn": "uvicorn",
    "sqlalchemy": "sqlalchemy",
    "alembic": "alembic",
    "psycopg": "psycopg[binary]",  # the extra names it with its wheels
    "pydantic": "pydantic",
    "requests": "requests",
    "urllib3": "requests",
    "prometheus_client": "prometheus_client",
    "hypercorn": "hypercorn",
    "grpclib": "grpclib",
    "h2": "grpclib",  # grpclib's own HTTP/2 dependency, named in grpc_host's types
    "numpy": "numpy",
}
# The parts of the package and the extra that must cover each ("" = the base install).
PARTS = {
    "wire": "",
    "pki": "",
    "policy": "",
    "schema": "",
    "client": "",
    "proto": "",
    "aio": "",
    "sdk": "",
    "router": "cli",
    "cli": "cli",
    "agent": "agent",
    "controller": "controller",
    "integrations": "",
}
# The requests adapter is imported on its own: it needs umbranet[integrations]. So is the
# Starlette/FastAPI authentication (integrations.auth): apps using it already have Starlette.
# integrations.uvicorn_host imports uvicorn only when called: apps served by it already have it.
# integrations.hypercorn_host and grpc_host are imported on their own, with umbranet[http2] and
# umbranet[grpc]. aio.tun_offload (numpy) serves only the agent's network mode (`umbra up --tun`),
# installed with umbranet[agent].
OPTIONAL = {
    ("aio", "numpy"),
    ("integrations", "hypercorn"),
    ("integrations", "grpclib"),
    ("integrations", "h2"),
    ("integrations", "requests"),
    ("integrations", "urllib3"),
    ("integrations", "starlette"),
    ("integrations", "uvicorn"),
}


def _third_party(part: str) -> set[str]:
    names: set[str] = set()
    for path in (SRC / part).rglob("*.py"):
        if "workload_pb2" in path.name:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "umbranet"}


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+(\[[^\]]*\])?", requirement)
    assert match, requirement
    return match.group(0)


def _closure(extra: str) -> set[str]:
    """The distributions the base install plus `extra` (with its nested extras) brings."""
    names = {_requirement_name(r).lower() for r in PROJECT["dependencies"]}
    pending = [extra] if extra else []
    seen: set[str] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for requirement in PROJECT["optional-dependencies"][current]:
            name = _requirement_name(requirement)
            if name.startswith("umbranet["):
                pending.extend(name[len("umbranet[") : -1].split(","))
            else:
                names.add(name.lower())
    return names


@pytest.mark.parametrize("part", sorted(PARTS))
def test_each_part_is_covered_by_its_extra(part: str) -> None:
    needed = {
        DISTRIBUTION[name]
        for name in _third_party(part)
        if (part, name) not in OPTIONAL and name in DISTRIBUTION
    }
    unknown = {n for n in _third_party(part) if n not in DISTRIBUTION}
    assert not unknown, f"{part} imports {unknown}: add them to DISTRIBUTION and an extra"
    missing = needed - _closure(PARTS[part])
    assert not missing, f"umbranet[{PARTS[part]}] lacks {missing} for {part}"


def test_the_sdk_install_has_no_server_stack() -> None:
    base = _closure("")
    assert not base & {"fastapi", "uvicorn", "sqlalchemy", "alembic", "grpcio", "typer"}


def test_the_requests_adapter_has_its_extra() -> None:
    assert "requests" in _closure("integrations")


def test_the_server_hosts_have_their_extras() -> None:
    assert "hypercorn" in _closure("http2")
    assert "grpclib" in _closure("grpc")


def test_all_brings_every_part() -> None:
    everything = _closure("all")
    for extra in ("cli", "agent", "controller", "integrations", "http2", "grpc"):
        assert _closure(extra) <= everything, extra


def test_network_mode_has_its_extra() -> None:
    assert "numpy" in _closure("agent")  # aio.tun_offload, imported by `umbra up --tun`
