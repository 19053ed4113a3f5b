"""The agent's side of the Workload API: feeds the server from the SDK Context.

`WorkloadEndpoint` lives on the agent's loop. It publishes the X.509-SVID at start and on
every renewal (the Context tells it), keeps the trust domain's JWT bundle current (at start,
after each renewal and every few minutes), and answers the server's JWT-SVID requests from
a cache filled over the agent's own mTLS identity: the controller signs, so the JWT key never
leaves it, and the token always names the agent's identity.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from umbranet.agent.config import ConfigError
from umbranet.agent.workload.server import WorkloadApiError, WorkloadApiServer
from umbranet.agent.workload.svids import JwtSvidCache, x509_material
from umbranet.client.controller import ControllerClient, ControllerError, JwtSvidGrant
from umbranet.pki import IdentityFile, PkiError
from umbranet.sdk import Context

__all__ = ["JWT_BUNDLE_REFRESH", "WorkloadEndpoint"]

log = logging.getLogger("umbranet.agent.workload")

JWT_BUNDLE_REFRESH = 300.0
"""Seconds between JWT bundle fetches when nothing else asks for one."""
_RETRY_FIRST, _RETRY_MAX = 0.5, 60.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


class WorkloadEndpoint:
    """``await endpoint.start()`` ... ``await endpoint.close()`` on the agent's loop."""

    def __init__(
        self,
        context: Context,
        path: Path,
        *,
        clock: Callable[[], datetime] = _utcnow,
        bundle_refresh: float = JWT_BUNDLE_REFRESH,
    ) -> None:
        self._context = context
        self._bundle_refresh = bundle_refresh
        self._cache = JwtSvidCache(self._fetch_jwt_svid, clock)
        self.server = WorkloadApiServer(path, self._fetch_from_server_thread)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bundle_due = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def path(self) -> Path:
        return self.server.path

    async def start(self) -> None:
        """Publish the current SVID and serve; ConfigError ``workload_socket_unusable`` if
        the socket cannot be bound (in use, not a socket, no such directory)."""
        self._loop = asyncio.get_running_loop()
        self.server.publish_x509(x509_material(self._context.identity))
        try:
            await asyncio.to_thread(self.server.start)
        except OSError as exc:
            raise ConfigError("workload_socket_unusable", str(exc)) from exc
        self._unsubscribe = self._context.on_renewal(self._renewed)
        self._task = self._loop.create_task(self._follow_jwt_bundle())

    async def close(self) -> None:
        """Stop serving and remove the socket."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.server.stop)

    def statistics(self) -> dict[str, Any]:
        return {**self.server.statistics(), "jwt_svids_cached": len(self._cache)}

    # -- internals --------------------------------------------------------------------------

    def _renewed(self, identity: IdentityFile) -> None:
        self.server.publish_x509(x509_material(identity))
        self._bundle_due.set()

    async def _follow_jwt_bundle(self) -> None:
        retry = _RETRY_FIRST
        while True:
            self._bundle_due.clear()
            try:
                async with ControllerClient(self._context.identity) as client:
                    jwks = await client.jwt_bundle()
                self.server.publish_jwt_bundle(jwks)
                wait, retry = self._bundle_refresh, _RETRY_FIRST
            except (ControllerError, PkiError) as exc:
                log.warning("cannot fetch the JWT bundle: %r; retrying in %.1fs", str(exc), retry)
                wait, retry = retry, min(retry * 2, _RETRY_MAX)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._bundle_due.wait(), wait)

    def _fetch_from_server_thread(
        self, audience: tuple[str, ...]
    ) -> concurrent.futures.Future[JwtSvidGrant]:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._jwt_svid(audience), self._loop)

    async def _jwt_svid(self, audience: tuple[str, ...]) -> JwtSvidGrant:
        try:
            return await self._cache.get(audience)
        except ControllerError as exc:
            if exc.status in (401, 403):
                raise WorkloadApiError("PERMISSION_DENIED", exc.message) from None
            if exc.status in (400, 422):
                raise WorkloadApiError("INVALID_ARGUMENT", exc.message) from None
            raise WorkloadApiError("UNAVAILABLE", f"controller: {exc}") from None

    async def _fetch_jwt_svid(self, audience: tuple[str, ...]) -> JwtSvidGrant:
        async with ControllerClient(self._context.identity) as client:
            return await client.jwt_svid(audience)
