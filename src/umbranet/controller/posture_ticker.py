"""The minute clock of posture: re-evaluate every endpoint's postures and push any change.

Reports trigger re-checks as they arrive (`routes_client.post_posture`), but some outcomes move
with time alone: a certificate ages past its limit, a time window closes. A background thread
runs `PostureWatch` at a fixed interval (60 s by default) and bumps the epoch when an outcome
changed, so routers re-check their live circuits and close those no longer allowed. With
several replicas, only the holder of the cluster lease runs it (`controller.cluster`).
"""

from __future__ import annotations

import logging

from umbranet.controller.api.context import AppContext
from umbranet.controller.periodic import PeriodicJob
from umbranet.controller.service.policy import active_policy
from umbranet.controller.service.posture import PostureWatch

__all__ = ["DEFAULT_INTERVAL", "PostureTicker"]

log = logging.getLogger("umbranet.controller.posture")

DEFAULT_INTERVAL = 60.0
MAX_SCOPED = 64
"""More endpoints than this moving at once: routers re-check everything (one request size)."""


class PostureTicker(PeriodicJob):
    """``ticker.start()`` ... ``ticker.stop()``; `tick` runs one evaluation (tests call it)."""

    name = "posture-ticker"

    def __init__(self, context: AppContext, interval: float = DEFAULT_INTERVAL) -> None:
        super().__init__(interval, log)
        self.context = context
        self._watch = PostureWatch()

    def tick(self) -> list[str]:
        """Evaluate once; bump the epoch if some endpoint's posture outcome changed.

        Only the replica holding the cluster lease evaluates (once per cluster, not once per
        replica); a replica taking the lease over starts afresh (its first evaluation only
        records outcomes, as after a restart)."""
        context = self.context
        if not context.lease.held():
            self._watch = PostureWatch()
            return []
        with context.transaction(read_only=True) as store:  # a scan of every endpoint
            active = active_policy(store)
            compiled = active.compiled if active is not None else None
            moved = self._watch.changed(store, compiled, context.clock())
            ids = [i.spiffe_id for n in moved if (i := store.identity_by_name(n)) is not None]
        if moved:
            shown = ", ".join(moved[:5]) + (f" and {len(moved) - 5} more" if len(moved) > 5 else "")
            # Routers re-check only these endpoints' grants (all of them if many moved).
            scope = ids if len(ids) == len(moved) and len(ids) <= MAX_SCOPED else []
            context.events.bump(f"posture changed for {shown}", scope)
        return moved
