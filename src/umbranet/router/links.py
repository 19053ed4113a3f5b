"""What the router's switch keeps per link and per circuit end: plain records, no logic.

A `SwitchLink` is one link (its `LinkSession`, its routes, its budgets); a `Route` is one end
of a relayed circuit on one link, pointing at the other end. Their kind and side are stored,
never inferred from circuit-id parity (see `router/switch.py`).
"""

from __future__ import annotations

from collections.abc import Hashable
from enum import Enum

from umbranet.proto.flow import RelayAccount
from umbranet.proto.link import LinkSession, Role
from umbranet.router.quotas import SwitchLimits, TokenBucket
from umbranet.wire import FrameType
from umbranet.wire.frames import encode_frame

__all__ = ["LinkKind", "Route", "Side", "SwitchLink"]


class LinkKind(Enum):
    """Who is on the other end of a link, from its HELLO role (checked against its SVID)."""

    ENDPOINT = "endpoint"
    ROUTER = "router"


class Side(Enum):
    """Which end of its circuit a route's link leads to."""

    DIALER = "dialer"
    HOST = "host"


class Route:
    """One side of a relayed circuit."""

    __slots__ = (
        "account",
        "circuit",
        "dialer",
        "ended",
        "expires_at",
        "link",
        "opened",
        "peer",
        "service",
        "side",
    )

    def __init__(self, link: SwitchLink, circuit: int, service: str, side: Side) -> None:
        self.link = link
        self.circuit = circuit
        self.service = service
        self.side = side
        self.peer: Route = self
        self.account = RelayAccount(0)  # DATA from this side toward the peer
        self.ended = False  # this side sent FIN
        self.opened = False  # this side sent its handshake frame (ACCEPT or HANDSHAKE)
        self.dialer = ""  # the dialing identity
        self.expires_at = 0  # the admitting ticket's expiry (unix seconds), 0 if none here


class SwitchLink:
    """The switch's state for one link."""

    __slots__ = (
        "control_bucket",
        "handle",
        "identity",
        "in_flight",
        "outbox",
        "peer_key",
        "routes",
        "session",
        "ticket_bucket",
    )

    def __init__(
        self, handle: Hashable, identity: str, session: LinkSession, limits: SwitchLimits
    ) -> None:
        self.handle = handle  # the shell's carrier (an aio Link), kept as an identity only
        self.identity = identity
        # The fingerprint of the peer certificate's key: tickets bound to another key of the
        # same identity (say, a revoked certificate's) are refused over this link.
        self.peer_key: str | None = None
        self.session = session
        self.outbox = session.outbox  # the same list: relayed frames go straight to it
        self.routes: dict[int, Route] = {}
        self.in_flight = 0  # relayed DATA bytes towards this link, not yet credited back
        # Buckets start full (their clock starts at 0: the first `take` refills them).
        self.ticket_bucket = TokenBucket(
            limits.ticket_checks_per_second, limits.ticket_check_burst, 0.0
        )
        self.control_bucket = TokenBucket(
            limits.control_frames_per_second, limits.control_frame_burst, 0.0
        )

    @property
    def kind(self) -> LinkKind | None:
        role = self.session.peer_role
        if role is None:
            return None
        return LinkKind.ROUTER if role is Role.ROUTER else LinkKind.ENDPOINT

    def send(self, ftype: FrameType, circuit: int, payload: bytes) -> None:
        self.outbox.append(encode_frame(ftype, circuit, payload))
