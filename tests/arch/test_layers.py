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

# The ground floor: modules at the package root that every layer may use and that import no
# other part of umbranet (metrics and log formats; the one bounded cache type).
GROUND = {"obs", "cache"}

# Each layer may import only these umbranet layers (and itself). Reason in the comment.
ALLOWED = {
    "obs": set(),  # observability is below everything it observes
    "cache": set(),  # a data structure, nothing more
    "wire": GROUND | set(),  # the byte format stands alone
    "pki": GROUND | set(),  # identities and tokens stand alone
    "policy": GROUND | set(),  # decisions are pure functions of data
    "proto": GROUND | {"wire", "pki", "policy"},  # state machines over the format and identities
    "aio": GROUND | {"wire", "pki", "policy", "proto"},  # shells drive the machines
    "controller": GROUND | {"wire", "pki", "policy", "proto", "aio"},
    "router": GROUND | {"wire", "pki", "policy", "proto", "aio"},  # never the SDK or controller
    "sdk": GROUND | {"wire", "pki", "policy", "proto", "aio"},  # never the router or controller
    "integrations": GROUND | {"wire", "pki", "policy", "proto", "aio", "sdk"},  # on the SDK
    "agent": GROUND | {"wire", "pki", "policy", "proto", "aio", "sdk"},  # an SDK application
}
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
