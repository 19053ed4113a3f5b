"""The architecture, tested: layers import one way, pure code stays pure, routers hold no keys."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "umbranet"
MODULES = sorted(p for p in SRC.rglob("*.py") if "migrations" not in p.parts)

# The ground floor: modules at the package root that every layer may use (time as `Instant`,
# metrics, the one bounded cache). They import no layer above them.
GROUND = {"clock", "obs", "cache", "home_layout"}
# Each layer may import only these umbranet layers (and itself). Reason in the comment.
ALLOWED = {
    "wire": GROUND,  # the byte format stands alone
    "pki": GROUND,  # identities and tokens stand alone
    "policy": GROUND,  # decisions are pure functions of data
    # the REST models shared by the controller and its clients: pydantic over the ground floor
    "schema": GROUND,
    "proto": GROUND | {"wire", "pki", "policy"},  # state machines over format and identities
    "aio": GROUND | {"wire", "pki", "policy", "proto"},  # shells drive the machines
    # the controller's REST clients: below everything that talks to it, never the controller
    "client": GROUND | {"wire", "pki", "policy", "schema", "proto", "aio"},
    # never its own clients
    "controller": GROUND | {"wire", "pki", "policy", "schema", "proto", "aio"},
    # never the SDK or controller
    "router": GROUND | {"wire", "pki", "policy", "schema", "proto", "aio", "client"},
    # never the router or controller
    "sdk": GROUND | {"wire", "pki", "policy", "schema", "proto", "aio", "client"},
    # built on the SDK; never the router or the controller
    "integrations": GROUND | {"wire", "pki", "policy", "schema", "proto", "aio", "client", "sdk"},
    # on the SDK; never the router or the controller
    "agent": GROUND | {"wire", "pki", "policy", "schema", "proto", "aio", "client", "sdk"},
    # the test kit drives the real machines and shells of every layer below the CLI
    "testing": GROUND
    | {
        "wire",
        "pki",
        "policy",
        "schema",
        "proto",
        "aio",
        "client",
        "controller",
        "router",
        "sdk",
        "agent",
    },
}
# What the schema floor may import beyond the standard library: the client shares it, so it
# must never bring the controller's web or database stack with it.
SCHEMA_THIRD_PARTY = {"pydantic"}
PURE = {"wire", "pki", "policy", "proto"}
IMPURE_MODULES = {"asyncio", "socket", "ssl", "time", "selectors", "threading"}


def _layer(path: Path) -> str:
    parts = path.relative_to(SRC).parts
    if len(parts) == 1:
        return path.stem if path.stem in GROUND else ""
    return parts[0]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_module_imports_follow_the_layers(path: Path) -> None:
    layer = _layer(path)
    if layer not in ALLOWED:
        return
    for name in _imports(path):
        if name.startswith("umbranet."):
            target = name.split(".")[1]
            assert target == layer or target in ALLOWED[layer], f"{layer} imports {name}"
        if layer in PURE:
            assert name.split(".")[0] not in IMPURE_MODULES, f"pure {layer} imports {name}"


@pytest.mark.parametrize("name", sorted(GROUND))
def test_the_ground_floor_imports_no_layer(name: str) -> None:
    path = SRC / f"{name}.py"
    if not path.exists():
        pytest.skip(f"{name}.py is not part of this tree")
    assert not [n for n in _imports(path) if n.startswith("umbranet.")]


def test_the_schema_floor_needs_only_pydantic() -> None:
    names = {
        n.split(".")[0] for path in (SRC / "schema").rglob("*.py") for n in _imports(path)
    } - set(sys.stdlib_module_names)
    assert names - {"umbranet"} <= SCHEMA_THIRD_PARTY, sorted(names)


@pytest.mark.parametrize("layer", ["sdk", "agent", "integrations", "schema", "client"])
def test_endpoint_code_never_reaches_the_controller_or_router(layer: str) -> None:
    # Endpoints talk to the controller over its REST API (client + schema) and to routers over
    # links; importing the server side would ship its stack and its secrets' code to devices.
    assert not ALLOWED[layer] & {"controller", "router"}, layer


def test_nothing_in_the_package_imports_the_test_kit() -> None:
    # umbranet.testing holds fakes (clocks, networks); production code must never reach them.
    offenders = [
        str(path.relative_to(SRC))
        for path in MODULES
        if _layer(path) != "testing"
        and any(
            n == "umbranet.testing" or n.startswith("umbranet.testing.") for n in _imports(path)
        )
    ]
    assert offenders == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_every_module_says_what_it_is(path: Path) -> None:
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path.name} has no docstring"


def test_router_never_loads_end_to_end_crypto() -> None:
    code = (
        "import sys, umbranet.router, umbranet.router.runner, umbranet.cli.router_cmd\n"
        "bad = [m for m in sys.modules if m in ('umbranet.proto.noise', 'umbranet.proto.e2e')"
        " or m.startswith('umbranet.sdk')]\n"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_logging_alone_does_not_load_the_metrics_library() -> None:
    """Every `umbra` command reads --log-format; only components that keep metrics pay for
    prometheus_client (obs imports it on first use of a registry)."""
    code = (
        "import sys, umbranet.cli.main, umbranet.sdk, umbranet.obs\n"
        "print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    "package",
    ["umbranet.wire", "umbranet.pki", "umbranet.sdk", "umbranet.router", "umbranet.policy"],
)
def test_dunder_all_names_exist(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.__all__ names missing {name}"
