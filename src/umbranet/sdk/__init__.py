"""The Python SDK: dial and host services by name through the overlay.

async with umbranet.Context.from_file("app.json") as ctx:
    stream = await ctx.dial("billing")
    async for incoming in ctx.listen("reports"):
        print(incoming.peer.spiffe_id)
"""

from umbranet.proto.e2e import PeerIdentity
from umbranet.sdk.context import Context, Grant
from umbranet.sdk.errors import BindError, DialError, StreamReset, UmbraError
from umbranet.sdk.listener import Listener
from umbranet.sdk.stream import Stream

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
]
