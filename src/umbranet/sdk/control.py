"""The SDK's control plane over HTTPS: the controller client, seen as a `ControlPlane`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from umbranet.client.controller import ControllerClient, ControllerError
from umbranet.pki import IdentityFile
from umbranet.sdk.errors import UmbraError
from umbranet.sdk.grants import Grant


class ControllerPlane:
    """Tickets and renewals from the controller named in the identity file."""

    def __init__(self, identity: IdentityFile) -> None:
        self._client = ControllerClient(identity)

    async def grant(self, service: str, action: str, port: int | None = None) -> Grant:
        try:
            grant = await self._client.ticket(service, action, port)
        except ControllerError as exc:
            raise UmbraError(exc.code, exc.message) from exc
        routers = tuple(r.address for r in grant.routers if r.address)
        expires_at = int(grant.expires_at.timestamp())
        return Grant(grant.ticket, expires_at, routers, grant.http_rules)

    async def report_posture(self, report: dict[str, Any]) -> bool:
        try:
            return await self._client.report_posture(report)
        except ControllerError as exc:
            raise UmbraError(exc.code, exc.message) from exc

    async def refresh_bundle(self) -> IdentityFile | None:
        try:
            return await self._client.refresh_bundle()
        except ControllerError as exc:
            raise UmbraError(exc.code, exc.message) from exc

    async def renew(self) -> IdentityFile:
        try:
            return await self._client.renew()
        except ControllerError as exc:
            raise UmbraError(exc.code, exc.message) from exc

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        try:
            async for event in self._client.events():
                yield event
        except ControllerError as exc:
            raise UmbraError(exc.code, exc.message) from exc

    async def aclose(self) -> None:
        await self._client.aclose()
