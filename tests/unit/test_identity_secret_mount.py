"""Identity files mounted as Kubernetes Secrets (issue 15, item 2): 0644 or 0440, owned by
root, on a read-only mount, are accepted with a warning that names ``defaultMode: 0400``; the
same mode anywhere else is refused with an error that says what to do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from umbranet.pki import IdentityFile, PkiError
from umbranet.testing import LocalNetwork

can_mount = pytest.mark.skipif(
    os.getuid() != 0 or shutil.which("unshare") is None,
    reason="a private read-only mount needs root and unshare(1)",
)

LOAD = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from umbranet.pki import IdentityFile, PkiError
    try:
        print("loaded", IdentityFile.load(sys.argv[1]).name)
    except PkiError as exc:
        print("refused", exc.code)
    """
)


def _secret_volume(tmp_path: Path, mode: int) -> Path:
    """A directory laid out as Kubernetes does it: the file behind a ..data symlink."""
    volume = tmp_path / "secret"
    data = volume / "..2026_01_01" / "identity.json"
    data.parent.mkdir(parents=True)
    LocalNetwork().identity("web-1").save(data)
    data.chmod(mode)
    (volume / "..data").symlink_to("..2026_01_01")
    (volume / "identity.json").symlink_to("..data/identity.json")
    return volume


def _load_in_read_only_mount(volume: Path) -> subprocess.CompletedProcess[str]:
    """Bind-mount `volume` onto itself read-only in a private mount namespace, then load."""
    script = (
        f'mount --bind "{volume}" "{volume}" && mount -o remount,bind,ro "{volume}" && '
        f'"{sys.executable}" -c "$LOAD" "{volume}/identity.json"'
    )
    env = {**os.environ, "LOAD": LOAD, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


@can_mount
@pytest.mark.parametrize("mode", [0o644, 0o440])
def test_a_read_only_root_owned_secret_is_accepted_with_a_warning(
    tmp_path: Path, mode: int
) -> None:
    result = _load_in_read_only_mount(_secret_volume(tmp_path, mode))
    assert result.stdout.strip() == "loaded web-1", result.stderr
    assert "defaultMode: 0400" in result.stderr and "WARNING" in result.stderr


@can_mount
def test_a_writable_secret_file_is_refused_even_on_a_read_only_mount(tmp_path: Path) -> None:
    result = _load_in_read_only_mount(_secret_volume(tmp_path, 0o666))
    assert result.stdout.strip() == "refused identity_file_insecure", result.stderr


def test_the_same_mode_on_a_writable_disk_is_refused_and_the_error_says_what_to_do(
    tmp_path: Path,
) -> None:
    path = _secret_volume(tmp_path, 0o644) / "identity.json"
    with pytest.raises(PkiError) as caught:
        IdentityFile.load(path)
    assert caught.value.code == "identity_file_insecure"
    assert "chmod 600" in caught.value.reason and "defaultMode: 0400" in caught.value.reason
