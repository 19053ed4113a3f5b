"""One long-lived controller client for a component whose identity changes under it.

A router or an agent calls the controller again and again (refreshes, reports, re-checks) as
the identity its SDK context or switch holds *now*; that identity is replaced by a renewal or a
bundle update. `CurrentClient` keeps one `ControllerClient` (one connection pool, one TLS
session) and makes a new one only when the identity object changes, closing the old one, so
no call pays a TLS handshake and none runs as a certificate that was renewed away.
"""

from __future__ import annotations

from collections.abc import Callable

from umbranet.client.controller import ControllerClient
from umbranet.pki import IdentityFile

__all__ = ["CurrentClient"]


class CurrentClient:
    """``await current.get()`` is the client for ``identity()``; `aclose` (or ``async with``)
    closes the last one."""

    def __init__(
        self,
        identity: Callable[[], IdentityFile],
        factory: Callable[[IdentityFile], ControllerClient] = ControllerClient,
    ) -> None:
        self._identity = identity
        self._factory = factory
        self._client: ControllerClient | None = None
        self._for: IdentityFile | None = None
        self.made = 0  # clients made so far (one per identity; tests and statistics read it)

    async def get(self) -> ControllerClient:
        identity = self._identity()
        client = self._client
        if client is None or self._for is not identity:
            if client is not None:
                await client.aclose()
            client = self._client = self._factory(identity)
            self._for = identity
            self.made += 1
        return client

    async def aclose(self) -> None:
        client, self._client, self._for = self._client, None, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> CurrentClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
