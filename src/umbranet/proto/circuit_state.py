"""A circuit's states, their legal moves, and the events a circuit reports (see
`proto/circuit.py`, whose rules these are)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from umbranet.proto.e2e import PeerIdentity
from umbranet.wire import ErrorCode

__all__ = [
    "MOVES",
    "MOVING",
    "PATH_FAILURES",
    "RETRY_RESUME",
    "Closed",
    "Detached",
    "Event",
    "Opened",
    "Readable",
    "Resumed",
    "State",
    "Writable",
]


class State(Enum):
    """Where the circuit is in its life."""

    DIALING = "dialing"  # DIAL sent, waiting for the host's ACCEPT
    ACCEPTING = "accepting"  # ACCEPT sent, waiting for the dialer's HANDSHAKE
    OPEN = "open"  # data flows (each direction may have ended with FIN)
    DETACHED = "detached"  # the path failed; the session waits for a new circuit
    RESUMING = "resuming"  # dialer: RESUME sent on a new circuit, waiting for RESUME_OK
    REATTACHING = "reattaching"  # host: RESUME_OK sent, waiting for the dialer's CONFIRM
    CLOSED = "closed"  # both directions ended, or reset


MOVING = frozenset({State.DETACHED, State.RESUMING, State.REATTACHING})
MOVES: dict[State, frozenset[State]] = {
    State.DIALING: frozenset({State.OPEN, State.CLOSED}),
    State.ACCEPTING: frozenset({State.OPEN, State.CLOSED}),
    State.OPEN: frozenset({State.DETACHED, State.REATTACHING, State.CLOSED}),
    State.DETACHED: frozenset({State.RESUMING, State.REATTACHING, State.CLOSED}),
    State.RESUMING: frozenset({State.OPEN, State.DETACHED, State.CLOSED}),
    State.REATTACHING: frozenset({State.OPEN, State.DETACHED, State.REATTACHING, State.CLOSED}),
    State.CLOSED: frozenset(),
}
# RESETs that say the path failed, not the peer or the grant: the session moves instead.
PATH_FAILURES = frozenset(
    {ErrorCode.PEER_GONE, ErrorCode.HOST_GONE, ErrorCode.SHUTTING_DOWN, ErrorCode.OVERLOADED}
)
# While a resume is under way, a new path may also be not ready yet: try another.
RETRY_RESUME = PATH_FAILURES | {
    ErrorCode.NO_TERMINATOR,
    ErrorCode.HANDSHAKE_TIMEOUT,
    ErrorCode.TOO_MANY_CIRCUITS,
}


@dataclass(frozen=True, slots=True)
class Opened:
    """The handshake finished; `peer` is proven by certificate and ticket."""

    peer: PeerIdentity


@dataclass(frozen=True, slots=True)
class Readable:
    """Plaintext (or the end of the peer's direction) is ready for `take`."""


@dataclass(frozen=True, slots=True)
class Writable:
    """Send credit arrived; queued writes may proceed."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The circuit is finished. `code` NO_ERROR with `authenticated` means both directions
    ended cleanly. `authenticated` is False when the end came in a RESET frame from the
    network: its code and reason are only what some hop claimed (even "no_error")."""

    code: ErrorCode
    reason: str
    by_peer: bool
    authenticated: bool = True

    @property
    def clean(self) -> bool:
        """Both directions ended with their sealed FIN; nothing was cut short."""
        return self.code is ErrorCode.NO_ERROR and self.authenticated


@dataclass(frozen=True, slots=True)
class Detached:
    """The path under the session failed; it waits (its stream sees a pause) for a resume."""

    code: ErrorCode
    reason: str


@dataclass(frozen=True, slots=True)
class Resumed:
    """The session moved to a new circuit (`Circuit.id`); data flows again."""


Event = Opened | Readable | Writable | Closed | Detached | Resumed
