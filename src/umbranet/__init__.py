"""Umbranet: a zero-trust overlay network.

Applications reach dark services by name through routers; every stream is tied to a
cryptographic identity, authorized before connect, and end-to-end encrypted.

The SDK's public names are available here::

    import umbranet

    async with umbranet.Context.from_file("app.json") as ctx:
        stream = await ctx.dial("billing")

They are loaded on first use (PEP 562), so ``import umbranet`` stays cheap for the command
line, which imports this package on every call and needs the SDK only for some commands.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it (umbranet.sdk.__all__, and the socket patch).
_EXPORTS = {
    "BindError": "umbranet.sdk.errors",
    "Context": "umbranet.sdk.context",
    "DialError": "umbranet.sdk.errors",
    "Grant": "umbranet.sdk.context",
    "Listener": "umbranet.sdk.listener",
    "PeerIdentity": "umbranet.proto.e2e",
    "Stream": "umbranet.sdk.stream",
    "StreamReset": "umbranet.sdk.errors",
    "UmbraError": "umbranet.sdk.errors",
    # The opt-in socket patch, as `umbranet.monkeypatch(ctx, ...)` (like OpenZiti's zitify).
    "monkeypatch": "umbranet.integrations.monkeypatch",
    "unpatch": "umbranet.integrations.monkeypatch",
}

__all__ = [
    "BindError",
    "Context",
    "DialError",
    "Grant",
    "Listener",
    "PeerIdentity",
    "Stream",
    "StreamReset",
    "UmbraError",
    "__version__",
    "monkeypatch",
    "unpatch",
]

if TYPE_CHECKING:  # the same names for type checkers and IDEs, without the import at run time
    from umbranet.integrations.monkeypatch import monkeypatch, unpatch
    from umbranet.proto.e2e import PeerIdentity
    from umbranet.sdk.context import Context, Grant
    from umbranet.sdk.errors import BindError, DialError, StreamReset, UmbraError
    from umbranet.sdk.listener import Listener
    from umbranet.sdk.stream import Stream


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'umbranet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
