"""Shared plumbing for the peer paths: binary checks and daemons stopped in reverse order."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from bench.netns import Netns
from bench.paths import have_binary

__all__ = ["DaemonPath"]


class DaemonPath:
    """A path made of daemons started in the namespaces; `teardown` stops them last-first."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    binaries: ClassVar[Mapping[str, str]] = {}

    def __init__(self) -> None:
        self._started: list[tuple[Netns, int]] = []

    def unavailable(self) -> str | None:
        missing = sorted({pkg for b, pkg in self.binaries.items() if not have_binary(b)})
        return f"package(s) not installed: {', '.join(missing)}" if missing else None

    def versions(self) -> dict[str, str]:
        return {}

    def spawn(
        self, ns: Netns, argv: list[str], log: Path, env: Mapping[str, str] | None = None
    ) -> int:
        pid = ns.spawn(argv, log, env)
        self._started.append((ns, pid))
        return pid

    def teardown(self) -> None:
        while self._started:
            ns, pid = self._started.pop()
            ns.procs.stop(pid)
