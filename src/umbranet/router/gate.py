"""The router's ticket gate: `admission.admit` behind a cache of successes and a budget.

An application dials with one cached ticket for minutes, and a full check (an Ed25519
signature, ~20 us) on every DIAL would be the router's largest per-dial cost; a flood of
forged tickets would make it the attacker's lever. So verdicts that allowed are remembered
(refusals never are), and full checks are rate-limited per link and per identity.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from umbranet.clock import Instant
from umbranet.pki import TrustBundle
from umbranet.pki.tickets import Action
from umbranet.router.admission import Admission, admit
from umbranet.router.links import SwitchLink
from umbranet.router.quotas import SwitchLimits, TokenBucket
from umbranet.wire import ErrorCode

__all__ = ["TicketGate"]

_CACHE_SIZE = 4096
_IDENTITY_BUCKETS = 65536

_Key = tuple[str, str, str, Action, str | None]


class TicketGate:
    """Ticket admission for one router. `epoch` is the newest revocation epoch adopted."""

    def __init__(
        self, bundle: Callable[[], TrustBundle], limits: SwitchLimits, counters: Counter[str]
    ) -> None:
        self._bundle = bundle
        self._limits = limits
        self._counters = counters
        self.epoch = 0
        self._identity_buckets: dict[str, TokenBucket] = {}
        # (token, subject, service, action, key) -> (verdict, bundle checked against, when)
        self._admitted: dict[_Key, tuple[Admission, object, float]] = {}

    def check_on(
        self,
        token: str,
        link: SwitchLink,
        *,
        subject: str,
        service: str,
        action: Action,
        now: Instant,
    ) -> Admission:
        """`check` for a ticket that arrived on `link`: its buckets; the subject's key only
        when the subject is the link's peer (over a router link the first router checked
        the key)."""
        return self.check(
            token,
            subject=subject,
            service=service,
            action=action,
            now=now,
            link_bucket=link.ticket_bucket,
            link_identity=link.identity,
            peer_key=link.peer_key if subject == link.identity else None,
        )

    def check(
        self,
        token: str,
        *,
        subject: str,
        service: str,
        action: Action,
        now: Instant,
        link_bucket: TokenBucket,
        link_identity: str,
        peer_key: str | None,
    ) -> Admission:
        """`admit`, or a remembered success for the same token, subject, service, action
        and link key, against the same bundle object, while the ticket has not expired, the
        clock has not gone back and no newer epoch was adopted. A full check spends from the
        link's and the identity's budgets; with either empty the answer is `rate_limited`."""
        bundle = self._bundle()
        now_ts = now.unix
        key = (token, subject, service, action, peer_key)
        hit = self._admitted.get(key)
        if hit is not None:
            verdict, checked_bundle, checked_at = hit
            ticket = verdict.ticket
            if (
                ticket is not None
                and checked_bundle is bundle
                and checked_at <= now_ts < ticket.expires_at
                and ticket.epoch >= self.epoch
            ):
                return verdict
        if not (link_bucket.take(now.mono) and self._identity_bucket(link_identity, now)):
            return Admission(None, ErrorCode.RATE_LIMITED, "too many ticket checks; slow down")
        self._counters["ticket_verifications"] += 1
        verdict = admit(
            token,
            peer_id=subject,
            service=service,
            action=action,
            bundle=bundle,
            now=now.wall,
            min_epoch=self.epoch,
            peer_key=peer_key,
        )
        if verdict.ticket is not None:
            if len(self._admitted) >= _CACHE_SIZE:
                self._admitted.clear()
            self._admitted[key] = (verdict, bundle, now_ts)
        return verdict

    def _identity_bucket(self, identity: str, now: Instant) -> bool:
        bucket = self._identity_buckets.get(identity)
        if bucket is None:
            if len(self._identity_buckets) >= _IDENTITY_BUCKETS:
                self._identity_buckets.clear()
            limits = self._limits
            bucket = TokenBucket(limits.ticket_checks_per_second, limits.ticket_check_burst, 0.0)
            self._identity_buckets[identity] = bucket
        return bucket.take(now.mono)
