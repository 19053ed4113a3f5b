"""Installing the peer tools from Debian, and telling which paths can run.

Daemons must not start on the host while their packages install (openssh-server would start a
host sshd), so a temporary `policy-rc.d` that forbids service starts is put in place when the
system has none. A package that cannot be installed only disables the paths that need it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = ["HARNESS_BINARIES", "install_packages"]

# executable -> Debian package, needed by the harness itself whatever the paths
HARNESS_BINARIES = {
    "iperf3": "iperf3",
    "ip": "iproute2",
    "ss": "iproute2",
    "timeout": "coreutils",
    "taskset": "util-linux",
}
_POLICY_RC = Path("/usr/sbin/policy-rc.d")


def install_packages(packages: Iterable[str], log: Callable[[str], None]) -> dict[str, str]:
    """Install `packages` with apt-get; return {package: why it failed} for failures."""
    wanted = sorted(set(packages))
    if not wanted:
        return {}
    log(f"installing from Debian: {' '.join(wanted)}")
    with _no_service_starts():
        if _apt(["install", *wanted]) is None:
            return {}
        log("apt-get install failed; running apt-get update and trying again")
        _apt(["update"])
        if _apt(["install", *wanted]) is None:
            return {}
        failed: dict[str, str] = {}
        for pkg in wanted:  # one at a time, so one bad package does not block the others
            err = _apt(["install", pkg])
            if err is not None:
                failed[pkg] = err
                log(f"could not install {pkg}: {err}")
        return failed


def _apt(args: list[str]) -> str | None:
    """Run apt-get; None on success, else the last line of its error output."""
    cmd = ["apt-get", "-y", "-q", "--no-install-recommends", *args]
    if args[0] == "update":
        cmd = ["apt-get", "-q", "update"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=900, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode == 0:
        return None
    lines = [x for x in proc.stderr.splitlines() if x.strip()] or ["(no output)"]
    return lines[-1].strip()


@contextlib.contextmanager
def _no_service_starts() -> Iterator[None]:
    if _POLICY_RC.exists():
        yield
        return
    _POLICY_RC.write_text(
        "#!/bin/sh\n# temporary, from umbranet bench: no daemons at install\nexit 101\n"
    )
    _POLICY_RC.chmod(0o755)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            _POLICY_RC.unlink()
