"""Running the agent in the background (``umbra up --daemon``) and stopping it (``umbra down``).

`daemonize` is the classic double fork: the parent waits on a pipe until the detached
grandchild says its API and listeners are up (or exits with the grandchild's error), so a
script's next command can rely on the agent. The pidfile in the state directory is the one
way `stop_agent` finds the agent; it checks the PID still runs an umbra agent before
signalling it (a stale pidfile can name a recycled PID).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from umbranet.agent.config import AgentConfig, ConfigError

__all__ = ["daemonize", "read_pid", "stop_agent"]

_READY = b"R"


def daemonize(config: AgentConfig, run: Callable[[Callable[[], None]], None]) -> int:
    """Fork; in the parent return the daemon's PID once it is ready (ConfigError if it died).

    The grandchild never returns: it calls ``run(ready)`` with its output in the log file,
    and exits when `run` does.
    """
    read_end, write_end = os.pipe()
    first = os.fork()
    if first:
        os.close(write_end)
        return _await_ready(config, first, read_end)
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    os.umask(0o077)
    _redirect_output(config.log_file)

    def ready() -> None:
        with contextlib.suppress(OSError):
            os.write(write_end, _READY)
            os.close(write_end)

    code = 0
    try:
        run(ready)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:
        print(f"agent failed: {exc!r}", file=sys.stderr, flush=True)
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def read_pid(config: AgentConfig) -> int | None:
    """The PID in the pidfile if that process is alive and runs an umbra agent."""
    try:
        pid = int(config.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 0 or not _alive(pid) or not _is_agent(pid):
        return None
    return pid


def stop_agent(config: AgentConfig, timeout: float = 15.0) -> int:
    """SIGTERM the agent named by the pidfile and wait for it to exit; returns its PID."""
    pid = read_pid(config)
    if pid is None:
        raise ConfigError("not_running", f"no running agent recorded in {config.pidfile}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise ConfigError("stop_timeout", f"agent {pid} still running after {timeout}s")
        time.sleep(0.05)
    return pid


def _await_ready(config: AgentConfig, child: int, read_end: int) -> int:
    """Reap the first child, then wait for the grandchild's ready byte (EOF: it failed)."""
    os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as pipe:
        signalled = pipe.read(1)
    if signalled != _READY:
        tail = _tail(config.log_file)
        raise ConfigError("agent_failed", f"the agent exited during start; {tail}")
    pid = None
    for _ in range(100):
        pid = read_pid(config)
        if pid is not None:
            break
        time.sleep(0.02)
    if pid is None:
        raise ConfigError("agent_failed", f"the agent wrote no pidfile in {config.state_dir}")
    return pid


def _redirect_output(log_file: Path) -> None:
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null_fd)
    os.close(log_fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


def _is_agent(pid: int) -> bool:
    """Whether `pid` runs ``umbra up`` (Linux: by /proc; elsewhere assume the pidfile)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return False
    return b"up" in argv and any(b"umbra" in part for part in argv)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return f"see {path}"
    return "log: " + " | ".join(text) if text else f"see {path}"
