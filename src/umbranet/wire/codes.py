"""Error codes carried by RESET, GOAWAY and BIND_ERR frames, shared by every component.

Codes are stable numbers on the wire; the names are the machine codes used in logs, metrics
and exceptions. Ranges: 1-9 framing, 10-19 tickets and authorization, 20-29 routing,
30-39 end-to-end, 40-49 the application, 50-59 the router itself.
"""

from enum import IntEnum


class ErrorCode(IntEnum):
    """Why a circuit, a binding or a whole link ended."""

    NO_ERROR = 0
    PROTOCOL_ERROR = 1
    FRAME_TOO_LARGE = 2
    UNSUPPORTED_VERSION = 3
    FLOW_CONTROL_ERROR = 4
    BAD_CONTROL_PAYLOAD = 5

    TICKET_INVALID = 10
    TICKET_EXPIRED = 11
    TICKET_WRONG_IDENTITY = 12
    TICKET_WRONG_SERVICE = 13
    NOT_AUTHORIZED = 14
    REVOKED = 15
    TICKET_STALE = 16  # issued before the latest revocation epoch: fetch a fresh one
    RECHECK_FAILED = 17  # after an epoch, the grant could not be re-checked: closed, not kept
    TICKET_WRONG_KEY = 18  # the ticket is bound to another certificate than the link's
    CERT_REVOKED = 19  # the link's certificate was revoked by the controller

    NO_TERMINATOR = 20
    HOST_GONE = 21
    PEER_GONE = 22
    RESUME_TIMEOUT = 23  # the session found no new path within its resume deadline
    RESUME_REFUSED = 24  # a resume for an unknown session, or one not sealed by its keys
    REPLAYED = 25  # a resume (or a stream open) the host has seen before
    RESUME_GAP = 26  # the peer acknowledged bytes this side can no longer resend
    TRANSIT_REFUSED = 27  # a no-transit router asked to pass on a dial neither from nor to it
    INSTANCE_GONE = 28  # the host process an in-session open names is not bound on this way

    HANDSHAKE_FAILED = 30
    PEER_IDENTITY_MISMATCH = 31
    PEER_NOT_AUTHORIZED = 32
    DECRYPT_FAILED = 33
    PORT_NOT_GRANTED = 34  # the stream's port is not the one the dialer's ticket grants
    KEY_LIMIT_EXCEEDED = 35  # the peer sealed more under one key than the protocol allows
    TICKET_UNBOUND = 36  # the dial ticket is bound (cnf) to another certificate key than proven

    REFUSED = 40
    CANCELLED = 41

    INTERNAL_ERROR = 50
    SHUTTING_DOWN = 51
    TOO_MANY_CIRCUITS = 52
    HANDSHAKE_TIMEOUT = 53  # a circuit's handshake did not finish in time
    RATE_LIMITED = 54  # too many control frames or ticket checks from one link or identity
    QUOTA_EXCEEDED = 55  # an identity's or link's share (pending circuits, windows) is spent
    OVERLOADED = 56  # the router's own budget is spent; the biggest holder was shed

    RELAY_NOT_ALLOWED = 60  # no valid relay ticket from this link for that destination key
    RELAY_UNKNOWN_PEER = 61  # no endpoint link at this router holds that destination key
    RELAY_QUEUE_FULL = 62  # the destination's link is backed up; relayed datagrams are dropped

    @property
    def code(self) -> str:
        """The machine code as logged and counted, e.g. ``ticket_expired``."""
        return self.name.lower()

    @classmethod
    def from_wire(cls, value: int) -> "ErrorCode":
        """Map a number from the wire; numbers this version does not know become PROTOCOL_ERROR."""
        try:
            return cls(value)
        except ValueError:
            return cls.PROTOCOL_ERROR
