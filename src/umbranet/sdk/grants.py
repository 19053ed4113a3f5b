"""What the SDK gets from the controller: a `Grant` (a ticket and the routers to present it
at) and the `ControlPlane` it asks for grants, renewals and events. The context keeps them;
tests and the in-memory network (`umbranet.testing`) plug in their own control plane."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from umbranet.pki import IdentityFile

__all__ = ["ControlPlane", "Grant", "default_control"]


@dataclass(frozen=True, slots=True)
class Grant:
    """A ticket from the controller and the routers to present it at."""

    ticket: str
    expires_at: int
    routers: tuple[str, ...]
    http_rules: dict[str, Any] | None = None


class ControlPlane(Protocol):
    """What the SDK needs from the controller (see `umbranet.client.controller`)."""

    async def grant(self, service: str, action: str, port: int | None = None) -> Grant: ...

    async def renew(self) -> IdentityFile: ...

    async def report_posture(self, report: dict[str, Any]) -> bool: ...

    async def refresh_bundle(self) -> IdentityFile | None: ...

    def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]: ...

    async def aclose(self) -> None: ...


def default_control(identity: IdentityFile) -> ControlPlane:
    """The controller named in the identity file, over HTTPS."""
    from umbranet.sdk.control import ControllerPlane

    return ControllerPlane(identity)
