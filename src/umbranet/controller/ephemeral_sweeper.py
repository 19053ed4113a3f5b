"""The clock of ephemeral identities: note who is online, remove those offline too long.

A background thread runs `joinkeys.sweep_ephemeral` every ``interval`` seconds (30 s by
default: removals happen within that much of the limit). A removal bumps the epoch, so routers
re-check the circuits of the removed identities and close them.
"""

from __future__ import annotations

import logging

from umbranet.controller.api.context import AppContext
from umbranet.controller.periodic import PeriodicJob
from umbranet.controller.service.joinkeys import sweep_ephemeral

__all__ = ["DEFAULT_INTERVAL", "EphemeralSweeper"]

log = logging.getLogger("umbranet.controller.joinkeys")

DEFAULT_INTERVAL = 30.0


class EphemeralSweeper(PeriodicJob):
    """``sweeper.start()`` ... ``sweeper.stop()``; `tick` sweeps once (tests call it)."""

    name = "ephemeral-sweeper"

    def __init__(self, context: AppContext, interval: float = DEFAULT_INTERVAL) -> None:
        super().__init__(interval, log)
        self.context = context

    def tick(self) -> list[str]:
        """Note this replica's online members; remove the expired ones only when this
        replica holds the cluster lease (each replica knows only its own streams, so every
        replica notes, and one removes)."""
        context = self.context
        remove = context.lease.held()
        with context.transaction() as store:
            online = context.presence.online()
            removed = sweep_ephemeral(store, online, context.clock(), remove=remove)
        if removed:
            log.info("removed offline ephemeral identities: %s", ", ".join(removed))
            context.events.bump(f"ephemeral identities removed: {', '.join(removed[:5])}")
        return removed
