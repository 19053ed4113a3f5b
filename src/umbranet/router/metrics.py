"""The router's metrics: its own counters, read from ``Router.statistics()`` at scrape time.

The frame switch counts in plain ints on the hot path (a DATA frame costs well under a
microsecond to relay; a labelled Prometheus counter per frame would cost more than the relay).
So the router keeps its numbers as it always has, and `RouterCollector` turns a
``statistics()`` snapshot into metric families whenever ``/metrics`` is scraped. The listener
runs on the router's event loop (`umbranet.aio.metrics_listener`), so the snapshot is never
taken while the loop is halfway through changing it.

What the collector reads from ``statistics()`` (a key that is absent is not exposed):

- ``links``, ``circuits``, ``bindings``: open now (gauges);
- ``epoch``: the newest revocation epoch adopted (gauge);
- ``bytes_in``, ``bytes_out``, ``frames_in``, ``frames_out``: totals over all links since start;
- ``terminators``: how dials found their host (``picked_<strategy>``, ``picked_session_host``,
  ``terminator_failed``), as ``umbra_router_terminator_picks_total{how=...}`` and
  ``umbra_router_terminator_failures_total``;
- ``counters``: a map of totals. The event names in `EVENTS` become their own counters; every
  other key is the machine code of a refusal (``ticket_expired``, ``no_terminator``,
  ``tls_handshake_failed``, ...) and becomes ``umbra_router_refused_total{code=...}``, because
  the router counts each refusal under its code. A new non-refusal event must be added to
  `EVENTS` (and to ``docs/metrics.md``), or it would be reported as a refusal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from umbranet.aio.metrics_listener import MetricsListener, parse_listen
from umbranet.obs import Metrics

__all__ = ["EVENTS", "RouterCollector", "RouterMetrics", "serve_metrics"]

Statistics = Callable[[], Mapping[str, Any]]

EVENTS: dict[str, tuple[str, str]] = {
    "links_accepted": ("umbra_router_links_accepted", "Links that passed TLS and SVID checks."),
    "dials": ("umbra_router_circuits_opened", "Circuits opened (a DIAL admitted and routed)."),
    "binds": ("umbra_router_bindings_opened", "Bindings accepted (a BIND admitted)."),
    "links_throttled": (
        "umbra_router_links_throttled",
        "Times a link stopped being read because its own output was not drained.",
    ),
    "peer_silent": (
        "umbra_router_links_silent",
        "Links closed because the peer sent nothing for the keepalive deadline.",
    ),
    "recheck_rounds": ("umbra_router_recheck_rounds", "Re-check rounds run (epochs, expiries)."),
    "recheck_requests": (
        "umbra_router_recheck_requests",
        "Re-check requests (chunks of at most 256 grants) sent to the controller.",
    ),
    "recheck_failures": (
        "umbra_router_recheck_failures",
        "Re-check requests that failed (refused, timed out, unreachable).",
    ),
    "revalidations": (
        "umbra_router_revalidations",
        "Rounds re-validating circuits whose ticket expired.",
    ),
    "links_dialed": ("umbra_router_links_dialed", "Links this router dialed to other routers."),
    "revalidation_deferred": (
        "umbra_router_revalidations_deferred",
        "Re-validation rounds deferred because the controller was unreachable (within grace).",
    ),
    "dial_retried": (
        "umbra_router_dials_retried",
        "Dials a host refused before accepting, offered to another host of the service.",
    ),
    "stun_binding_requests": (
        "umbra_router_stun_binding_requests",
        "STUN binding requests answered on the --stun-listen port (NAT traversal).",
    ),
    "ticket_verifications": (
        "umbra_router_ticket_verifications",
        "Tickets checked in full (signature, expiry, identity, service, epoch).",
    ),
    "rechecks": (
        "umbra_router_rechecks",
        "Re-checks of live circuits and bindings with the controller after a new epoch.",
    ),
    "relay_datagrams": (
        "umbra_router_relay_datagrams",
        "WireGuard datagrams relayed between two endpoint links (network mode).",
    ),
    "relay_allowances": (
        "umbra_router_relay_allowances",
        "Relay tickets accepted (WG_RELAY_ALLOW): a pair the controller allowed to be relayed.",
    ),
    "relay_mesh_datagrams": (
        "umbra_router_relay_mesh_datagrams",
        "WireGuard datagrams relayed to a neighbouring router that holds the destination key.",
    ),
    "relay_mesh_allowances": (
        "umbra_router_relay_mesh_allowances",
        "Relay tickets a neighbouring router forwarded that this router's gate accepted.",
    ),
    "relay_mesh_errors": (
        "umbra_router_relay_mesh_errors",
        "Relay refusals a neighbouring router reported, passed on to the source's link.",
    ),
}
"""Counter keys that are events, not refusals: key -> (metric name without _total, help)."""

_GAUGES = {
    "links": ("umbra_router_links", "Endpoint links open now."),
    "circuits": ("umbra_router_circuits", "Circuits open now."),
    "bindings": ("umbra_router_bindings", "Bindings (hosted services) open now."),
    "epoch": ("umbra_router_epoch", "The newest revocation epoch this router adopted."),
}
_TRAFFIC = {
    "bytes": ("umbra_router_bytes", "Bytes read from (in) and written to (out) all links."),
    "frames": ("umbra_router_frames", "Frames read from (in) and written to (out) all links."),
}


class RouterCollector(Collector):
    """Turns one ``statistics()`` snapshot into metric families per scrape."""

    def __init__(self, statistics: Statistics) -> None:
        self._statistics = statistics

    def describe(self) -> list[Metric]:
        # Nothing up front: registering must not take a snapshot (the router may not run yet).
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self._statistics()
        for key, (name, doc) in _GAUGES.items():
            if isinstance(stats.get(key), int | float):
                yield GaugeMetricFamily(name, doc, value=stats[key])
        for kind, (name, doc) in _TRAFFIC.items():
            values = {d: stats.get(f"{kind}_{d}") for d in ("in", "out")}
            present = {d: v for d, v in values.items() if isinstance(v, int | float)}
            if present:
                family = CounterMetricFamily(name, doc, labels=("direction",))
                for direction, value in present.items():
                    family.add_metric((direction,), value)
                yield family
        counters: Mapping[str, int] = stats.get("counters", {})
        for key, (name, doc) in EVENTS.items():
            yield CounterMetricFamily(name, doc, value=counters.get(key, 0))
        refused = CounterMetricFamily(
            "umbra_router_refused",
            "Refused links, circuits, bindings and frames, by machine code.",
            labels=("code",),
        )
        for key, value in sorted(counters.items()):
            if key not in EVENTS:
                refused.add_metric((key,), value)
        yield refused
        picks: Mapping[str, int] = stats.get("terminators", {})
        picked = CounterMetricFamily(
            "umbra_router_terminator_picks",
            "Dials given a host, by how it was picked: a strategy or the session's host.",
            labels=("how",),
        )
        for key, value in sorted(picks.items()):
            if key.startswith("picked_"):
                picked.add_metric((key.removeprefix("picked_"),), value)
        yield picked
        yield CounterMetricFamily(
            "umbra_router_terminator_failures",
            "Dials a picked host failed (its health counts them).",
            value=picks.get("terminator_failed", 0),
        )


class RouterMetrics(Metrics):
    """The router's registry: the collector over ``statistics()`` (more may be declared)."""

    def __init__(self, statistics: Statistics) -> None:
        super().__init__()
        self.collector(RouterCollector(statistics))


@asynccontextmanager
async def serve_metrics(
    statistics: Statistics, listen: str | None
) -> AsyncIterator[MetricsListener | None]:
    """Serve the router's metrics at ``http://LISTEN/metrics`` while the block runs; nothing
    when `listen` is None. A bare port binds loopback."""
    if listen is None:
        yield None
        return
    host, port = parse_listen(listen)
    async with MetricsListener(RouterMetrics(statistics).registry, host, port) as listener:
        yield listener
