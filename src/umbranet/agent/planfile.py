"""The crash-safe record of what an agent mode changed on the system, written once for root
mode (`redirect`) and network mode (`tunplan`).

Each mode describes its changes as a frozen dataclass with a ``netns`` field (the namespace
they were made in) and writes it to a JSON file in the state directory *before* changing
anything (`record`), so a crashed agent's changes can be undone later (`leftovers`, `undo`).
`undo` acts only in the namespace the changes were made in and only as root; a file the mode
rewrote is restored only if it still holds what the mode wrote (`restore_in_place`). The
system commands both modes run (`run_command`) live here too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol, TypeVar

from umbranet.agent.config import ConfigError

__all__ = [
    "current_netns",
    "leftovers",
    "record",
    "require_root",
    "restore_in_place",
    "run_command",
    "undo",
    "write_in_place",
]


class _Plan(Protocol):
    @property
    def netns(self) -> int: ...


P = TypeVar("P", bound=_Plan)


def record(state_dir: Path, name: str, plan: Any) -> None:
    """Write the plan (a dataclass) atomically to `name` in `state_dir`."""
    path = state_dir / name
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(plan), indent=2) + "\n")
    os.replace(temporary, path)


def leftovers(state_dir: Path, name: str, kind: Callable[..., P]) -> P | None:
    """The plan recorded in `state_dir` and not yet undone, if any; ConfigError ``bad_state``
    for a file that is there but unreadable (never guess what to undo)."""
    try:
        return kind(**json.loads((state_dir / name).read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError("bad_state", f"{state_dir / name} is unreadable: {exc}") from None


def undo(
    state_dir: Path,
    name: str,
    kind: Callable[..., P],
    mode: str,
    steps: Callable[[P], list[str]],
) -> list[str]:
    """Undo what `state_dir` records (idempotent): `steps` reverts the plan's changes and says
    what it removed or restored; then the record goes. Refused from another network namespace
    than the changes were made in (``wrong_namespace``) and without root."""
    plan = leftovers(state_dir, name, kind)
    if plan is None:
        return []
    if plan.netns != current_netns():
        raise ConfigError(
            "wrong_namespace",
            f"the {mode} changes were made in another network namespace; run this there",
        )
    require_root()
    done = steps(plan)
    (state_dir / name).unlink(missing_ok=True)
    return done


def restore_in_place(path: str | None, ours: str | None, original: str | None) -> bool:
    """Put `original` back into `path` only if the file still holds `ours` (what the mode
    wrote): a file someone else changed since is theirs now."""
    if path is None or ours is None or original is None:
        return False
    with contextlib.suppress(OSError):
        if Path(path).read_text() == ours:
            write_in_place(Path(path), original)
            return True
    return False


def write_in_place(path: Path, text: str) -> None:
    """Rewrite in place: the file keeps its inode, mode and any bind mount over it."""
    with open(path, "w") as handle:
        handle.write(text)


def require_root() -> None:
    """ConfigError ``needs_root`` unless we may change rules, routes and resolv.conf."""
    if os.geteuid() != 0:
        raise ConfigError("needs_root", "root mode changes nftables, routes and resolv.conf")
    for tool, package in (("nft", "nftables"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            raise ConfigError("missing_tool", f"root mode needs `{tool}` (Debian: {package})")


def current_netns() -> int:
    """The network namespace this process is in (changes are undone only in the same one)."""
    return os.stat("/proc/self/ns/net").st_ino


def run_command(argv: list[str], stdin: str | None = None, check: bool = True) -> bool:
    """Run a system command; a failure raises `system_change_failed` unless `check` is off.
    A missing program is a failure too (resolvectl removed since a crash must not stop the
    rest of an undo)."""
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        if check:
            raise ConfigError("missing_tool", f"`{argv[0]}` is not installed") from None
        return False
    if proc.returncode != 0 and check:
        raise ConfigError(
            "system_change_failed", f"{' '.join(argv[:3])} failed: {proc.stderr.strip()[:300]}"
        )
    return proc.returncode == 0
