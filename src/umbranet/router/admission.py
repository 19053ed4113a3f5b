"""Authorize before connect: the router's offline check of a ticket against the TLS peer.

A ticket proves the controller allowed `sub` to `act` on `svc` until `exp`. The router
accepts it only from the identity it names (the mTLS peer), only over a link whose client
certificate has a key the ticket is bound to (claim ``cnf``, `Ticket.key_binding`), only for
the service and action the frame asks for, and only while it is valid; it needs no
controller for this, so existing grants keep working while the controller is down.

`circuit_deadline` ties a circuit's life to its ticket: the switch closes a circuit when its
ticket expires (``ticket_expired``) unless the endpoint presented a fresh ticket for the same
grant (`revalidate`), never silently extending it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from umbranet.pki import PkiError, Ticket, TrustBundle, verify_ticket
from umbranet.pki.tickets import Action, certificate_key_fingerprint
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
    peer_key: str | None = None,
) -> Admission:
    """Check a ticket presented by `peer_id` to `action` `service` at `now`.

    A ticket from before `min_epoch` (the controller's latest revocation this router heard
    of) is stale: access may have been removed since, so the endpoint must fetch a new one.
    `peer_key` is the link certificate's key fingerprint (`link_key_fingerprint`); a ticket
    bound to other keys is refused (``ticket_wrong_key``): it was issued to another
    certificate of the identity, perhaps a revoked one.
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
    if peer_key is not None and not ticket.bound_to(peer_key):
        return Admission(
            None,
            ErrorCode.TICKET_WRONG_KEY,
            "ticket is bound to another certificate of this identity",
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


def link_key_fingerprint(cert_der: bytes) -> str | None:
    """The fingerprint tickets are bound to, from a link's client certificate (DER)."""
    try:
        return certificate_key_fingerprint(x509.load_der_x509_certificate(cert_der))
    except ValueError:
        return None


def circuit_deadline(ticket: Ticket) -> int:
    """When a circuit admitted with `ticket` must end (unix seconds) unless revalidated."""
    return ticket.expires_at


def revalidate(current: Ticket, fresh: Admission) -> Admission:
    """Extend a live circuit with a freshly admitted ticket, only for the same grant.

    `fresh` is `admit`'s verdict on the new ticket (same peer, key, epoch rules); it extends
    `current` only if it names the same identity, service, action and port and expires
    later. Anything else keeps the old deadline and says why.
    """
    ticket = fresh.ticket
    if ticket is None:
        return fresh
    same = (ticket.spiffe_id, ticket.service, ticket.action, ticket.port) == (
        current.spiffe_id,
        current.service,
        current.action,
        current.port,
    )
    if not same:
        return Admission(
            None, ErrorCode.TICKET_WRONG_SERVICE, "a fresh ticket must be for the same grant"
        )
    if ticket.expires_at <= current.expires_at:
        return Admission(None, ErrorCode.TICKET_EXPIRED, "the fresh ticket is not newer")
    return fresh
