"""`import umbranet` gives the SDK's public names, and costs nothing until one is used."""

from __future__ import annotations

import subprocess
import sys

import pytest

import umbranet
import umbranet.sdk


def test_the_sdk_names_are_the_packages_names() -> None:
    patch = {"monkeypatch", "unpatch"}
    assert sorted(set(umbranet.__all__) - {"__version__"} - patch) == sorted(umbranet.sdk.__all__)
    for name in umbranet.sdk.__all__:
        assert getattr(umbranet, name) is getattr(umbranet.sdk, name)
    assert callable(umbranet.Context.from_file) and callable(umbranet.Context.from_env)
    assert set(umbranet.sdk.__all__) <= set(dir(umbranet))


def test_the_socket_patch_is_a_top_level_name() -> None:
    from umbranet.integrations import monkeypatch

    assert umbranet.monkeypatch is monkeypatch.monkeypatch
    assert umbranet.unpatch is monkeypatch.unpatch


def test_unknown_names_and_submodules_behave_as_usual() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = umbranet.nope  # type: ignore[attr-defined]
    from umbranet import pki  # a subpackage is still imported as one

    assert pki.__name__ == "umbranet.pki"


def test_importing_the_package_loads_no_sdk() -> None:
    code = "import sys, umbranet; print(any(m.startswith('umbranet.') for m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
