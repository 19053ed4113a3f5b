"""pytest plugin (entry point ``umbranet``): a whole Umbranet network for a user's own tests.

The ``umbra_network`` fixture gives a test an in-memory controller (`LocalNetwork`: CA,
ticket signer, services and attributes) and one real router on 127.0.0.1, so code that dials
or hosts services runs end to end, encrypted, with policy decisions, and without starting a
process::

    async def test_my_client(umbra_network):
        umbra_network.service("db", dial=("app",), bind=("db-hosts",))
        async with umbra_network.context("app", "app") as app, \\
                   umbra_network.context("db-1", "db-hosts") as db:
            async with db.listen("db") as listener:  # bound once entered
                ...  # app.dial("db"), listener.accept(), or your own code

The router runs on its own thread and event loop, so the fixture works whatever runs the
test (pytest-asyncio, anyio, ``asyncio.run`` inside a plain test, the blocking facade):
contexts and router only meet through loopback sockets. pytest loads this module for every
session once umbranet is installed, so it imports nothing heavy until the fixture is used.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from umbranet.pki import IdentityFile
    from umbranet.sdk import Context
    from umbranet.testing.network import LocalNetwork

__all__ = ["UmbraTestNetwork", "umbra_network"]

_START_TIMEOUT = 30.0  # seconds a router may take to listen (a loaded CI machine)


class UmbraTestNetwork:
    """The fixture's value: make services and identities, get contexts that use the router."""

    def __init__(self, network: LocalNetwork, router_address: str) -> None:
        self.network = network
        self.router_address = router_address

    def service(self, name: str, dial: tuple[str, ...] = (), bind: tuple[str, ...] = ()) -> None:
        """A service that identities holding one of `dial` may dial and of `bind` may host."""
        self.network.service(name, dial=tuple(dial), bind=tuple(bind))

    def identity(self, name: str, *attributes: str) -> IdentityFile:
        """A workload identity with `attributes` (the identity file, in memory)."""
        return self.network.identity(name, attributes=tuple(attributes))

    def context(self, name: str, *attributes: str) -> Context:
        """An SDK context for a new identity `name` with `attributes`; use it as
        ``async with`` (or call ``aclose()``) in the test's own event loop."""
        from umbranet.sdk import Context

        identity = self.identity(name, *attributes)
        return Context(identity, control=self.network.control, renew=False)

    def disable(self, name: str) -> None:
        """Revoke identity `name`: its next dial or bind is refused, open streams are cut."""
        for spiffe_id in list(self.network.attributes):
            if spiffe_id.rsplit("/", 1)[-1] == name:
                self.network.disabled.add(spiffe_id)
        self.network.bump()


class _RouterThread:
    """One router on its own thread and loop, stopped when the block ends."""

    def __init__(self, network: LocalNetwork) -> None:
        self._network = network
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.address = ""
        self._thread = threading.Thread(target=self._main, name="umbra-test-router", daemon=True)

    def __enter__(self) -> _RouterThread:
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError("the test router did not start")
        if self._error is not None:
            raise RuntimeError(f"the test router failed to start: {self._error}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(_START_TIMEOUT)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test by __enter__
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        from umbranet.router import Router, RouterConfig

        identity = self._network.identity("test-router", kind="router")
        async with Router(RouterConfig(identity, port=0)) as router:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.address = router.address
            self._ready.set()
            await self._stop.wait()


@pytest.fixture
def umbra_network() -> Iterator[UmbraTestNetwork]:
    """A fresh network for one test: in-memory controller, one router on 127.0.0.1."""
    from umbranet.testing.network import LocalNetwork

    network = LocalNetwork()
    with _RouterThread(network) as router:
        network.routers.append(router.address)
        yield UmbraTestNetwork(network, router.address)
