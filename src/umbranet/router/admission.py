"""Authorize before connect: the router's offline check of a ticket against the TLS peer.

A ticket proves the controller allowed `sub` to `act` on `svc` until `exp`. The router
accepts it only from the identity it names (the mTLS peer), only for the service and action
the frame asks for, and only while it is valid; it needs no controller for this, so existing
grants keep working while the controller is down.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from umbranet.pki import PkiError, Ticket, TrustBundle, verify_ticket
from umbranet.pki.tickets import Action
from umbranet.wire import ErrorCode

_PKI_CODES = {
    "ticket_expired": ErrorCode.TICKET_EXPIRED,
}


@dataclass(frozen=True, slots=True)
class Admission:
    """The router's verdict on one DIAL or BIND, with the reason either way."""

    ticket: Ticket | None
    code: ErrorCode
    reason: str

    @property
    def allowed(self) -> bool:
        return self.ticket is not None


def admit(
    token: str,
    *,
    peer_id: str,
    service: str,
    action: Action,
    bundle: TrustBundle,
    now: datetime,
    min_epoch: int = 0,
) -> Admission:
    """Check a ticket presented by `peer_id` to `action` `service` at `now`.

    A ticket from before `min_epoch` (the controller's latest revocation this router heard
    of) is stale: access may have been removed since, so the endpoint must fetch a new one.
    """
    try:
        ticket = verify_ticket(token, bundle, now)
    except PkiError as exc:
        code = _PKI_CODES.get(exc.code, ErrorCode.TICKET_INVALID)
        return Admission(None, code, f"ticket rejected: {exc.reason}")
    if ticket.spiffe_id != peer_id:
        return Admission(
            None, ErrorCode.TICKET_WRONG_IDENTITY, "ticket was issued to another identity"
        )
    if ticket.service != service or ticket.action != action:
        return Admission(
            None,
            ErrorCode.TICKET_WRONG_SERVICE,
            f"ticket allows {ticket.action} {ticket.service}, not {action} {service}",
        )
    if ticket.epoch < min_epoch:
        return Admission(
            None, ErrorCode.TICKET_STALE, "ticket predates the latest revocation; get a new one"
        )
    return Admission(ticket, ErrorCode.NO_ERROR, f"ticket {ticket.id} allows {action} {service}")
