"""Facts about the machine a result was measured on (results only compare within one machine)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

__all__ = ["machine_facts"]


def machine_facts() -> dict[str, str]:
    facts = {
        "nproc": str(os.cpu_count()),
        "cpu": _cpuinfo("model name"),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "mem": _meminfo(),
        "os": _os_release(),
        "loadavg at start": Path("/proc/loadavg").read_text().strip(),
    }
    flags = _cpuinfo("flags").split()
    facts["cpu features"] = ", ".join(f for f in ("aes", "avx2", "avx512f") if f in flags) or "-"
    if "hypervisor" in flags:
        facts["virtualised"] = "yes"
    return facts


def _cpuinfo(key: str) -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _meminfo() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1048576:.1f} GiB"
    return "unknown"


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()
