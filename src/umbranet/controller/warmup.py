"""Build the policy's caches when a replica starts, before clients ask for them.

A replica compiles the policy in force and builds the network inventory (with the policy's
peer caches) on the first request that needs them: at 100,000 identities and 5,000 rules
that is 4-10 s (`bench.scale_pg`, "a cold replica's first view"), long enough for that
first client to time out and fail over. `warm_in_background` does the same work on a
thread as the replica starts, in a read-only transaction (on SQLite it takes no write
lock), so the first clients find the caches built. A request that arrives before it is done
builds its own, as without it; a failure is logged and changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time

from umbranet.controller.api.context import AppContext
from umbranet.controller.service.policy import active_policy, shared_inventory

__all__ = ["warm_in_background"]

log = logging.getLogger("umbranet.controller.warmup")


def warm(context: AppContext) -> float:
    """Compile the active policy and build the shared inventory; the seconds it took."""
    started = time.monotonic()
    with context.transaction(read_only=True) as store:
        if active_policy(store) is not None:
            shared_inventory(store, context.events.epoch)
    return time.monotonic() - started


def warm_in_background(context: AppContext) -> threading.Thread:
    def run() -> None:
        try:
            seconds = warm(context)
        except Exception:  # a cold cache is only slower; never stop the replica for it
            log.exception("warming the policy caches failed")
            return
        log.info("policy caches warm seconds=%.2f", seconds)

    thread = threading.Thread(target=run, name="policy-warmup", daemon=True)
    thread.start()
    return thread
