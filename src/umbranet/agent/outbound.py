"""One intercepted connection carried to its service: dial, record whois, relay, count.

Loopback listeners (`intercept`) and root mode's transparent listener (`rootmode`) differ only
in how they learn the service; from there every flow is the same, so it lives here once.
"""

from __future__ import annotations

import asyncio
import logging

from umbranet.agent.stats import Counters
from umbranet.agent.whois import Delivery, WhoisTable
from umbranet.sdk import Context, UmbraError
from umbranet.sdk.forward import relay, reset_tcp

__all__ = ["carry_outbound"]

log = logging.getLogger("umbranet.agent")


async def carry_outbound(
    context: Context,
    service: str,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    port: int | None,
    whois: WhoisTable,
    counters: Counters,
    counter: str,
) -> str | None:
    """Dial ``service`` (on ``port``) and relay the app's connection through the stream.

    A refused dial resets the app's connection (it sees ECONNREFUSED/RST, never an empty
    answer). Counts ``counter`` per stream, ``dial_failed.<code>`` and
    ``dial_reset_by_<side>.<code>``; returns what went wrong, for status pages, or None.
    """
    peername = writer.get_extra_info("peername")
    client = (str(peername[0]), int(peername[1]))
    try:
        stream = await context.dial(service, port=port)
    except (UmbraError, OSError, TimeoutError) as exc:
        code = exc.code if isinstance(exc, UmbraError) else type(exc).__name__
        counters.add(f"dial_failed.{code}")
        log.warning("dial %s failed: %r", service, str(exc))  # the reason may be a peer's
        reset_tcp(writer)
        return f"dial: {exc}"
    counters.add(counter)
    router = str(stream.get_extra_info("router"))
    whois.add(client, Delivery(stream.peer, service, "outbound", router))
    try:
        outcome = await relay(stream, reader, writer)
    finally:
        whois.remove(client)
    if not outcome.reset_by:
        return None
    if outcome.refused:  # a 0-RTT dial: refused after `dial` returned the stream
        counters.add(f"dial_failed.{outcome.code}")
        log.warning("dial %s failed: %s: %r", service, outcome.code, outcome.reason)
        return f"dial: {outcome.code}: {outcome.reason}"
    counters.add(f"dial_reset_by_{outcome.reset_by}.{outcome.code}")
    log.info("flow to %s reset by %s: %r", service, outcome.reset_by, outcome.reason)
    return f"reset by {outcome.reset_by}: {outcome.code}: {outcome.reason}"
