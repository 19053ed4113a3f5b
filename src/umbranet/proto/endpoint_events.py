"""What an endpoint's link machine (`proto/endpoint.py`) tells its owner: one event type per
outcome a shell acts on (a dial answered or failed, a stream arriving, a binding's fate, the
link going down, a session leaving or joining this link)."""

from __future__ import annotations

from dataclasses import dataclass

from umbranet.proto.circuit import Circuit

__all__ = [
    "AcceptFailed",
    "BindFailed",
    "BindingLost",
    "Bound",
    "DialFailed",
    "Dialed",
    "Event",
    "Incoming",
    "LinkDown",
    "SessionDetached",
    "SessionResumed",
]


@dataclass(frozen=True, slots=True)
class Dialed:
    """Our dial's handshake finished: the circuit carries data now."""

    circuit: Circuit


@dataclass(frozen=True, slots=True)
class DialFailed:
    """Our dial ended before it opened: refused on the way, or timed out."""

    circuit_id: int
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Incoming:
    """A dialer finished its handshake with one of our bindings."""

    binding_id: int
    circuit: Circuit


@dataclass(frozen=True, slots=True)
class AcceptFailed:
    """A dialer's handshake to one of our bindings failed (or the CONNECT was bad)."""

    binding_id: int
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Bound:
    binding_id: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class BindFailed:
    binding_id: int
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class BindingLost:
    """The router dropped a binding it had accepted (e.g. access was revoked)."""

    binding_id: int
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The link is over (GOAWAY either way, or the router went silent); close the carrier."""

    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class SessionDetached:
    """A stream's path failed; its session left this link and waits for a resume."""

    circuit: Circuit
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class SessionResumed:
    """A stream's session moved onto this link (circuit id `circuit.id`)."""

    circuit: Circuit


Event = (
    Dialed
    | DialFailed
    | Incoming
    | AcceptFailed
    | Bound
    | BindFailed
    | BindingLost
    | LinkDown
    | SessionDetached
    | SessionResumed
)
