"""`CurrentClient`: one controller client per identity, remade (and the old one closed) only
when a renewal replaces the identity."""

from __future__ import annotations

from typing import Any

from umbranet.client.current import CurrentClient
from umbranet.pki import IdentityFile
from umbranet.testing import LocalNetwork

NET = LocalNetwork()


class Recorded:
    def __init__(self, identity: IdentityFile) -> None:
        self.identity = identity
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


def test_one_client_until_the_identity_changes(arun: Any) -> None:
    identities = [NET.identity("alice")]

    async def main() -> None:
        async with CurrentClient(lambda: identities[-1], Recorded) as current:  # type: ignore[arg-type]
            first = await current.get()
            assert await current.get() is first
            identities.append(identities[0].with_bundle(NET.bundle))  # a renewal's new object
            second = await current.get()
            assert second is not first and first.closed and not second.closed
            assert second.identity is identities[-1]
            assert current.made == 2
        assert second.closed

    arun(main())
