"""The hosting half of `EndpointLink` (`proto/endpoint.py`): bindings and CONNECT.

BIND asks the router to route dials for a service here; BIND_OK / BIND_ERR answer it (a
later BIND_ERR drops a live binding: access revoked). A CONNECT for one of our bindings
becomes a host circuit, answered at once, within the cap on handshakes in progress. Split
from the link's file by responsibility; the state is `EndpointLink`'s.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from umbranet.clock import Instant
from umbranet.proto.circuit import Circuit, State
from umbranet.proto.endpoint_events import BindFailed, BindingLost, Bound, Event
from umbranet.proto.link import LinkSession
from umbranet.proto.resume import EARLY_DATA_MAX
from umbranet.wire import ErrorCode, Frame, FrameType, decode_control, encode_control
from umbranet.wire.control import DecodedFrame, decode_error

__all__ = ["Binding", "CircuitEntry", "EndpointHosting"]


class CircuitEntry:
    """A circuit on this link: ours (a dial) or a host circuit."""

    __slots__ = ("binding_id", "circuit", "epoch", "opened")

    def __init__(self, circuit: Circuit, binding_id: int | None) -> None:
        self.circuit = circuit
        self.binding_id = binding_id  # None for our own dials
        self.opened = False
        self.epoch = circuit.epoch  # the circuit moved away when this differs


class Binding:
    """A service this endpoint hosts on the link, and how it answers a CONNECT."""

    __slots__ = ("accept", "deadline", "service")

    def __init__(self, service: str, accept: Callable[[int, Frame], Circuit]) -> None:
        self.service = service
        self.accept = accept  # builds the host circuit for a CONNECT (Circuit.accept)
        self.deadline: float | None = None  # while a BIND waits for its answer


class EndpointHosting:
    """Bindings and incoming circuits (state set by `EndpointLink.__init__`)."""

    session: LinkSession
    max_pending_accepts: int
    bind_timeout: float
    _circuits: dict[int, CircuitEntry]
    _bindings: dict[int, Binding]
    _pending_accepts: int
    _events: deque[Event]

    def _due_at(self, at: float) -> float:
        raise NotImplementedError

    def _refuse(self, circuit_id: int, counter: str, code: ErrorCode, reason: str) -> None:
        raise NotImplementedError

    def _count(self, key: str) -> None:
        raise NotImplementedError

    def bind(
        self,
        binding_id: int,
        service: str,
        ticket: str,
        accept: Callable[[int, Frame], Circuit],
        now: Instant,
        *,
        weight: int | None = None,
        precedence: int | None = None,
        instance: str = "",
    ) -> None:
        """Ask the router to route dials for `service` here (again, to renew the ticket);
        `weight` and `precedence` go with it when set (the router's defaults: 1 and 0), and
        `instance`, this host process's id, which in-session opens name (docs/wire.md)."""
        binding = self._bindings.get(binding_id)
        if binding is None or binding.service != service:
            binding = self._bindings[binding_id] = Binding(service, accept)
        binding.accept = accept
        binding.deadline = self._due_at(now.later(self.bind_timeout))
        fields: dict[str, object] = {"ticket": ticket, "service": service}
        if weight is not None:
            fields["weight"] = weight
        if precedence is not None:
            fields["precedence"] = precedence
        if instance:
            fields["instance"] = instance
        self.session.send(FrameType.BIND, binding_id, encode_control(fields))

    def unbind(self, binding_id: int) -> None:
        if self._bindings.pop(binding_id, None) is not None:
            self.session.send(FrameType.UNBIND, binding_id)

    def _bind_answer(self, frame: Frame) -> None:
        binding = self._bindings.get(frame.circuit)
        if binding is None:
            return  # an answer for a binding we dropped meanwhile
        waiting = binding.deadline is not None
        binding.deadline = None
        if frame.type == FrameType.BIND_OK:
            if waiting:
                expires = decode_control(frame.payload).int_field("expires_at")
                self._events.append(Bound(frame.circuit, expires))
            return
        code, reason = decode_error(frame.payload)
        if waiting:
            self._events.append(BindFailed(frame.circuit, code.code, reason))
        else:
            del self._bindings[frame.circuit]
            self._count(code.code)
            self._events.append(BindingLost(frame.circuit, code.code, reason))

    def _connect(self, frame: Frame, touched: dict[int, Circuit]) -> None:
        """A router brings a dialer to one of our bindings."""
        ctl = decode_control(frame.payload)
        binding_id = ctl.int_field("binding")
        binding = self._bindings.get(binding_id)
        circuit_id = frame.circuit
        if (
            binding is None
            or not self.session.is_peer_id(circuit_id)
            or circuit_id in self._circuits
        ):
            self._refuse(circuit_id, "connect_refused", ErrorCode.REFUSED, "no such binding here")
            return
        if self._pending_accepts >= self.max_pending_accepts:
            self._refuse(
                circuit_id,
                "too_many_pending",
                ErrorCode.TOO_MANY_CIRCUITS,
                "the host has too many handshakes in progress",
            )
            return
        circuit = binding.accept(circuit_id, DecodedFrame(frame, ctl))
        self._circuits[circuit_id] = CircuitEntry(circuit, binding_id)
        self._pending_accepts += 1
        touched[circuit_id] = circuit

    def _just_accepted(self, circuit_id: int, circuit: Circuit) -> bool:
        """A stream opened inside a session in this read, with early data: its ACCEPT waits
        for the host's answer to it (same record). Without early data, or with all the
        early data an OPEN may carry (more is likely queued behind it), the ACCEPT leaves at
        once: the dialer needs its credit to send anything more."""
        entry = self._circuits.get(circuit_id)
        return (
            entry is not None
            and entry.binding_id is not None
            and not entry.opened
            and circuit.in_session
            and circuit.state is State.OPEN
            and 0 < circuit.readable_bytes < EARLY_DATA_MAX
        )
