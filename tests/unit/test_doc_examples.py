"""The Python examples users copy from the README and the SDK page are valid Python and name
only things that exist: every umbranet import, and every attribute reached from one
(``umbranet.Context.from_file``), resolves against the package as it is."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "docs" / "sdk.md", ROOT / "docs" / "agent.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, str]]:
    return [
        (f"{page.name}#{n}", match.group(1))
        for page in PAGES
        for n, match in enumerate(BLOCK.finditer(page.read_text()), 1)
    ]


BLOCKS = _blocks()


def test_the_pages_have_examples() -> None:
    assert len(BLOCKS) >= 4


def _imported(tree: ast.AST) -> dict[str, Any]:
    """Local name -> object for every umbranet import in the example (fails if one does not
    exist)."""
    names: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "umbranet":
                    module = importlib.import_module(alias.name)
                    if alias.asname:
                        names[alias.asname] = module
                    else:
                        names["umbranet"] = importlib.import_module("umbranet")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("umbranet"):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                names[alias.asname or alias.name] = getattr(module, alias.name)
    return names


def _chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
    parts: list[str] = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    if not isinstance(current, ast.Name):
        return None
    return current.id, parts[::-1]


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_example_is_valid_and_names_what_exists(where: str, code: str) -> None:
    tree = compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT | ast.PyCF_ONLY_AST)
    names = _imported(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not isinstance(node.ctx, ast.Load):
            continue
        found = _chain(node)
        if found is None or found[0] not in names:
            continue
        value = names[found[0]]
        for attr in found[1]:
            if isinstance(value, type(importlib)) and not hasattr(value, attr):
                value = importlib.import_module(f"{value.__name__}.{attr}")
                continue
            assert hasattr(value, attr), f"{where}: {found[0]}.{'.'.join(found[1])} does not exist"
            value = getattr(value, attr)
