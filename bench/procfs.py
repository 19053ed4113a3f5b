"""Process trees from /proc: CPU time and CPU affinity of a daemon and everything it forked.

Tunnel daemons fork per connection (socat, sshd) or spawn threads (stunnel, Go runtimes), so CPU
is read for the whole tree: utime+stime of every live process (threads are included in a
process's stat) plus cutime+cstime, which holds the children that already exited and were
reaped. The delta of that sum over a measurement is the CPU the tree used in it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

__all__ = ["cpu_seconds", "foreign_cpu_seconds", "set_affinity", "tree_pids"]

_TICK = os.sysconf("SC_CLK_TCK")


def tree_pids(root: int) -> list[int]:
    """`root` and all its live descendants (empty if `root` is gone)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    if _stat_fields(root) is None:
        return []
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(roots: Iterable[int]) -> float:
    """User+system CPU seconds so far of the trees under `roots` (incl. reaped children)."""
    ticks = 0
    seen: set[int] = set()
    for root in roots:
        for pid in tree_pids(root):
            if pid in seen:
                continue
            seen.add(pid)
            fields = _stat_fields(pid)
            if fields is not None:
                # fields[11:15] = utime, stime, cutime, cstime (stat fields 14-17)
                ticks += sum(int(x) for x in fields[11:15])
    return ticks / _TICK


def set_affinity(roots: Iterable[int], cpus: set[int]) -> int:
    """Pin every thread of the trees under `roots` to `cpus`; return how many threads moved."""
    moved = 0
    for root in roots:
        for pid in tree_pids(root):
            with contextlib.suppress(FileNotFoundError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.sched_setaffinity(int(tid), cpus)
                        moved += 1
    return moved


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, ...]."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(")") + 2 :].split()


def foreign_cpu_seconds(own_netns: frozenset[int]) -> float:
    """CPU seconds so far of user processes outside our namespaces (other jobs on the machine).

    Kernel threads are left out (softirq work for our own traffic may run in ksoftirqd), and
    so is the harness itself.
    """
    ticks = 0
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        fields = _stat_fields(pid)
        if fields is None or pid == 2 or fields[1] == "2":
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino in own_netns:
                continue
        except (FileNotFoundError, PermissionError):
            continue
        ticks += sum(int(x) for x in fields[11:15])
    return ticks / _TICK
