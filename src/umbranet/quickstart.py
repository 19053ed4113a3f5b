"""`umbra quickstart`: a whole network on this machine, in the foreground.

Initialises a controller home (once), runs the controller and a router as child processes,
enrolls a demo host and a demo client, serves the demo HTTP service dark from a third child
process, fetches it through the overlay once, and then keeps everything running (until
Ctrl-C) so the directory can be used with the other `umbra` commands.

What goes wrong on a second run is said up front, as a `QuickstartError` with the way out:
a port already in use (another quickstart still running?), a directory made with another
controller port, or a demo identity that was disabled or revoked while playing (it is enabled
or enrolled again, with a note). ``reset`` starts over with a fresh network.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from umbranet.client.controller import ControllerClient, ControllerError
from umbranet.controller.home import ControllerConfig, ControllerHome, init_home, load_home
from umbranet.demo import DEMO_SERVICE, fetch
from umbranet.pki import IdentityFile
from umbranet.sdk import Context, DialError

Say = Callable[[str], None]
DEFAULT_CONTROLLER_PORT = 8443
DEFAULT_ROUTER_PORT = 7443


class QuickstartError(RuntimeError):
    """The demo network cannot start as asked; the message says what to do instead."""


def existing_controller_port(root: Path) -> int | None:
    """The controller port a quickstart directory was made with, or None for a new one."""
    home = ControllerHome(root)
    if not home.is_initialised():
        return None
    return ControllerConfig.from_json(home.config_json.read_text()).port


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could not listen on host:port now (bound as servers bind)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def reset(root: Path) -> bool:
    """Delete a quickstart directory (only one: a controller home, or empty); True if done."""
    if not root.exists():
        return False
    if not ControllerHome(root).is_initialised() and any(root.iterdir()):
        raise QuickstartError(
            f"{root} is not a quickstart network (no controller/config.json); not deleting it"
        )
    shutil.rmtree(root)
    return True


@dataclass
class Quickstart:
    """The demo network's directory, ports and child processes."""

    root: Path
    router_port: int = DEFAULT_ROUTER_PORT
    controller_port: int = DEFAULT_CONTROLLER_PORT
    say: Say = print
    router_args: list[str] = field(default_factory=list)  # extra `umbra router run` options
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def start(self) -> bytes:
        """Bring the network up and fetch the demo service once; returns the response."""
        self.start_core()
        host_file, client_file = asyncio.run(self._enroll_demo())
        host = self._spawn("demo-host", ["demo", "serve", "--identity", str(host_file)])
        self.say(f"demo-host serves '{DEMO_SERVICE}' dark (pid {host.pid}, no listening socket)")
        return asyncio.run(self._fetch_with_retry(client_file))

    def start_core(self) -> None:
        """Initialise the home (once) and run the controller and one router."""
        self._check_ports()
        home = ControllerHome(self.root)
        if not home.is_initialised():
            init_home(self.root, datetime.now(UTC), address=f"127.0.0.1:{self.controller_port}")
            self.say(f"initialised a new network in {self.root}")
        loaded = load_home(self.root)
        url = loaded.config.url
        loaded.db.dispose()
        self.logs.mkdir(exist_ok=True)
        self._spawn("controller", ["--home", str(self.root), "controller", "run"])
        asyncio.run(self._wait_controller())
        self.say(f"controller running at {url} (log: {self.logs / 'controller.log'})")
        router_file = asyncio.run(self._enroll_router())
        self._spawn(
            "router",
            [
                "router",
                "run",
                "--identity",
                str(router_file),
                "--listen",
                f"127.0.0.1:{self.router_port}",
                "-v",
                *self.router_args,
            ],
        )
        asyncio.run(self._wait_router_registered())
        self.say(f"router1 listening on 127.0.0.1:{self.router_port} (the only data-plane port)")

    def admin(self) -> ControllerClient:
        """A controller client as the network's admin."""
        return ControllerClient(IdentityFile.load(ControllerHome(self.root).admin_file))

    async def enroll(self, name: str, attributes: list[str], kind: str = "workload") -> Path:
        """Create and enroll an identity (once); returns its identity file."""
        path = self.root / f"{name}.json"
        if not path.exists():
            async with self.admin() as client:
                created = await client.create_identity(name, kind=kind, attributes=attributes)
            (await ControllerClient.enroll(created.enrollment_token)).save(path)
            self.say(f"enrolled identity '{name}' ({', '.join(attributes)}) -> {path}")
        return path

    async def ensure_service(self, name: str, dial: list[str], bind: list[str]) -> None:
        """Create a service unless it exists."""
        async with self.admin() as client:
            if name not in {s.name for s in await client.list_services()}:
                await client.create_service(name, dial_attributes=dial, bind_attributes=bind)
                self.say(f"created service '{name}': dial by {dial}, host by {bind}")

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        """Run `umbra ARGS` as a child stopped by `stop`; output goes to logs/NAME.log."""
        return self._spawn(name, args)

    def stop(self) -> None:
        """Stop the children we started, newest first, by PID."""
        for child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(self.children):
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        self.children.clear()
        self.names.clear()

    def wait(self) -> None:
        """Block until Ctrl-C, SIGTERM or a child exits."""
        signal.signal(signal.SIGTERM, _interrupt)
        with contextlib.suppress(KeyboardInterrupt):
            while all(child.poll() is None for child in self.children):
                time.sleep(0.5)
        for child in self.children:
            if child.poll() is not None:
                self.say(f"a child process exited with {child.returncode}; see {self.logs}")

    # -- steps ----------------------------------------------------------------------------

    def _check_ports(self) -> None:
        made_with = existing_controller_port(self.root)
        if made_with is not None and made_with != self.controller_port:
            raise QuickstartError(
                f"{self.root} was made with controller port {made_with}; pass "
                f"--controller-port {made_with}, or --reset to start a new network"
            )
        for role, port, option in (
            ("controller", self.controller_port, "--controller-port"),
            ("router", self.router_port, "--router-port"),
        ):
            if port_in_use(port):
                raise QuickstartError(
                    f"port {port} on 127.0.0.1 (the {role}'s) is in use, maybe by a quickstart "
                    f"still running; stop it, or pass {option} with a free port"
                )

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        child = subprocess.Popen(
            [sys.executable, "-m", "umbranet.cli.main", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()
        self.children.append(child)
        self.names.append(name)
        return child

    async def _wait_controller(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with self.admin() as client:
                    await client.bundle()
                    return
            except (ControllerError, OSError):
                self._check_children()
                if time.monotonic() > deadline:
                    raise RuntimeError("the controller did not start; see its log") from None
                await asyncio.sleep(0.2)

    async def _enroll_router(self) -> Path:
        path = self.root / "router1.json"
        if not path.exists():
            async with self.admin() as client:
                created = await client.create_router("router1")
            (await ControllerClient.enroll(created.enrollment_token)).save(path)
        return path

    async def _wait_router_registered(self) -> None:
        deadline = time.monotonic() + 30
        async with self.admin() as client:
            while time.monotonic() < deadline:
                routers = await client.routers()
                # Registered (a second run finds the first run's record) and listening now:
                # probed by binding, not connecting, so the router logs no stray handshake.
                if any(
                    r.address == f"127.0.0.1:{self.router_port}" for r in routers
                ) and port_in_use(self.router_port):
                    return
                self._check_children()
                await asyncio.sleep(0.2)
        raise RuntimeError("the router did not register; see its log")

    async def _enroll_demo(self) -> tuple[Path, Path]:
        await self.ensure_service(DEMO_SERVICE, ["demo-clients"], ["demo-hosts"])
        host_file = await self.enroll("demo-host", ["demo-hosts"])
        client_file = await self.enroll("demo-client", ["demo-clients"])
        await self._make_usable("demo-host", host_file)
        await self._make_usable("demo-client", client_file)
        return host_file, client_file

    async def _make_usable(self, name: str, path: Path) -> None:
        """Undo what playing with an earlier run did to a demo identity: enable it again if
        disabled, enroll it again if its certificates were revoked."""
        async with self.admin() as client:
            info = await client.get_identity(name)
            if not info.enabled:
                await client.enable_identity(name)
                self.say(f"'{name}' was disabled in an earlier run: enabled it again")
            if not info.enrolled:
                token = await client.new_enrollment(name)
                (await ControllerClient.enroll(token)).save(path)
                self.say(f"'{name}' had its certificates revoked: enrolled it again")

    async def _fetch_with_retry(self, client_file: Path) -> bytes:
        """The host binds asynchronously: retry `no_terminator` for a few seconds."""
        deadline = time.monotonic() + 30
        async with Context.from_file(client_file) as context:
            while True:
                try:
                    return await fetch(context, DEMO_SERVICE, "/")
                except ConnectionError as exc:
                    self._check_children()
                    if isinstance(exc, DialError) and exc.code not in _STARTING_UP:
                        raise QuickstartError(
                            f"the demo fetch was refused ({exc.code}: {exc.reason}); "
                            "`umbra quickstart --reset` starts a fresh network"
                        ) from exc
                    if time.monotonic() > deadline:
                        raise QuickstartError(f"demo fetch failed: {exc}") from exc
                    await asyncio.sleep(0.2)

    def _check_children(self) -> None:
        for name, child in zip(self.names, self.children, strict=True):
            if child.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {child.returncode}; see {self.logs / name}.log"
                )


# Refusals that mean "not up yet" while the host binds and the router starts.
_STARTING_UP = frozenset({"no_terminator", "router_unreachable"})


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the network like Ctrl-C, so children are never left behind."""
    raise KeyboardInterrupt
