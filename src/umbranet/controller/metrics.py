"""The controller's metrics, one registry per app, served at ``GET /metrics`` (Prometheus text,
admin only) and as JSON at ``GET /v1/metrics``.

Every access verdict, refused request, issued credential and API request is counted here. The
names are stable and listed in ``docs/metrics.md``; a new metric is declared below (with its
labels) and documented there, or counting it raises. The controller's metric names carry no
component infix (``umbra_access_verdicts_total``), as they did before they were exported.
"""

from __future__ import annotations

from collections.abc import Callable

from umbranet.obs import Metrics as _Registry

__all__ = ["API_BUCKETS", "Metrics"]

API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
"""Seconds; API calls are a few milliseconds, a policy save with tests up to seconds."""


class Metrics(_Registry):
    """The controller's declared metrics (thread-safe: routes run in a thread pool)."""

    def __init__(self) -> None:
        super().__init__()
        self.verdicts = self.counter(
            "umbra_access_verdicts_total",
            "Access decisions by outcome (allow, deny), action and why they were asked.",
            ("action", "outcome", "purpose"),
        )
        self.api_requests = self.counter(
            "umbra_api_requests_total",
            "API requests answered, by route template, method and HTTP status.",
            ("route", "method", "status"),
        )
        self.api_latency = self.histogram(
            "umbra_api_request_duration_seconds",
            "Time to answer an API request, by route template and method.",
            ("route", "method"),
            buckets=API_BUCKETS,
        )
        self.api_errors = self.counter(
            "umbra_api_errors_total",
            "Refused or failed API requests by machine code.",
            ("code",),
        )
        self.tickets = self.counter(
            "umbra_tickets_issued_total", "Session tickets issued, by action.", ("action",)
        )
        self.enrollments = self.counter(
            "umbra_enrollments_total", "Identities enrolled (token exchanged), by kind.", ("kind",)
        )
        self.renewals = self.counter(
            "umbra_renewals_total", "Certificates renewed, by identity kind.", ("kind",)
        )
        self.jwt_svids = self.counter("umbra_jwt_svids_issued_total", "JWT-SVIDs issued.")
        self.recheck_unscoped = self.counter(
            "umbra_recheck_unscoped_total",
            "Re-checked grants answered 'close' without a decision: no current ticket for them.",
        )
        self.epoch = self.gauge("umbra_epoch", "The current revocation epoch.")
        self.subscribers = self.gauge(
            "umbra_event_subscribers", "Routers and endpoints following the epoch stream."
        )

    def follow_events(self, epoch: Callable[[], float], subscribers: Callable[[], float]) -> None:
        """Read the epoch and the subscriber count at scrape time from the event hub."""
        self.epoch.set_function(epoch)
        self.subscribers.set_function(subscribers)
