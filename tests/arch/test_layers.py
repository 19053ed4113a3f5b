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

# Each layer may import only these umbranet layers (and itself). Reason in the comment.
ALLOWED = {
    "wire": set(),  # the byte format stands alone
    "pki": set(),  # identities and tokens stand alone
    "policy": set(),  # decisions are pure functions of data
    "proto": {"wire", "pki", "policy"},  # state machines over the format and identities
    "aio": {"wire", "pki", "policy", "proto"},  # shells drive the machines
    # home_layout: the home's paths, shared with the CLI (stdlib only, so the CLI starts fast)
    "controller": {"wire", "pki", "policy", "proto", "aio", "home_layout"},
    "router": {"wire", "pki", "policy", "proto", "aio"},  # never the SDK or controller
    "sdk": {"wire", "pki", "policy", "proto", "aio"},  # never the router or controller
    "integrations": {"wire", "pki", "policy", "proto", "aio", "sdk"},  # built on the SDK
    "agent": {"wire", "pki", "policy", "proto", "aio", "sdk"},  # an SDK application
}
PURE = {"wire", "pki", "policy", "proto"}
IMPURE_MODULES = {"asyncio", "socket", "ssl", "time", "selectors", "threading"}


def _layer(path: Path) -> str:
    parts = path.relative_to(SRC).parts
    return parts[0] if len(parts) > 1 else ""


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


@pytest.mark.parametrize(
    "package",
    ["umbranet.wire", "umbranet.pki", "umbranet.sdk", "umbranet.router", "umbranet.policy"],
)
def test_dunder_all_names_exist(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.__all__ names missing {name}"
