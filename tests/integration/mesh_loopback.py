"""Shared by the mesh tests with router processes on loopback (a `Quickstart` network and
a second router): the second router, and SDK contexts pinned to chosen routers.

(The namespace version, with routers that link only where a wire is, is `mesh_lab.py`.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.conftest import free_port
from umbranet.client.controller import ControllerClient
from umbranet.pki import IdentityFile
from umbranet.quickstart import Quickstart
from umbranet.sdk import Context

__all__ = ["pinned", "start_router2"]


def start_router2(net: Quickstart, directory: Path) -> str:
    """Enroll "router2" and run it (logging verbosely) on a free loopback port; its address.
    It meshes with the quickstart's router through the controller once both registered."""
    address = f"127.0.0.1:{free_port()}"
    path = directory / "router2.json"

    async def enroll() -> None:
        async with net.admin() as admin:
            created = await admin.create_router("router2")
        (await ControllerClient.enroll(created.enrollment_token)).save(path)

    asyncio.run(enroll())
    net.spawn("router2", ["router", "run", "--identity", str(path), "--listen", address, "-v"])
    return address


def pinned(identity_file: Path, *routers: str, **options: Any) -> Context:
    """An SDK context that presents every grant at `routers` (the controller's list is
    not used): where a test has attached this endpoint."""
    return Context(IdentityFile.load(identity_file), routers=routers, renew=False, **options)
