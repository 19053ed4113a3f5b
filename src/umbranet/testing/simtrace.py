"""The simulated network's trace: every frame that arrived and every fault and event, in order.

A record is (virtual time, from, to, what, circuit, note): `what` is a frame type name
(`DATA`, `RESET`, ...) for a frame that arrived (`frame` true; `from -> to` in the
rendering), or an upper-case event name for what the network or a node did (`PARTITION`,
`HEAL`, `LINK_DOWN`, `KILLED`, `DIALED`, `STREAM_END`, ...; rendered `node [other]`). Tests
assert on records (`find`, `first`); a failing test prints `render()`, the flow step by step,
as nebula's end-to-end tests render theirs. Notes carry only what is the same on every run of
a seed (sizes of DATA, credit amounts, error codes, service names), never key material or
the lengths of handshake messages (certificate signatures vary by a byte), so the rendering
of one seed is reproducible and two runs can be compared as text.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from umbranet.wire import Flag, Frame, FrameType, WireError, decode_control
from umbranet.wire.control import decode_error

__all__ = ["Trace", "TraceRecord", "describe_frame"]

_CREDIT = struct.Struct("!I")
_ERRORS = frozenset({FrameType.RESET, FrameType.GOAWAY, FrameType.BIND_ERR})
_NAMED = frozenset({FrameType.DIAL, FrameType.CONNECT, FrameType.BIND})


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One step of the flow."""

    time: float  # virtual seconds since the network was made
    src: str
    dst: str
    what: str
    circuit: int = 0  # the id on the link the frame crossed (ids differ hop by hop)
    note: str = ""
    frame: bool = False  # a frame that crossed a link (else something a node or the net did)

    def render(self) -> str:
        if self.frame:
            where = f"{self.src} -> {self.dst}"
        else:
            where = f"{self.src} [{self.dst}]" if self.dst else self.src
        circuit = f"c={self.circuit}" if self.circuit else ""
        return f"{self.time:10.6f}  {where:<24} {self.what:<12} {circuit:<8} {self.note}".rstrip()


class Trace:
    """An append-only list of records with a few ways to look things up."""

    def __init__(self) -> None:
        self.records: list[TraceRecord] = []

    def add(self, record: TraceRecord) -> None:
        self.records.append(record)

    def find(
        self,
        what: str | None = None,
        *,
        src: str | None = None,
        dst: str | None = None,
        circuit: int | None = None,
        note: str | None = None,
        frame: bool | None = None,
    ) -> list[TraceRecord]:
        """Records matching every given field (`note`: a substring of the note)."""
        return [
            r
            for r in self.records
            if (what is None or r.what == what)
            and (src is None or r.src == src)
            and (dst is None or r.dst == dst)
            and (circuit is None or r.circuit == circuit)
            and (note is None or note in r.note)
            and (frame is None or r.frame == frame)
        ]

    def first(
        self,
        what: str | None = None,
        *,
        src: str | None = None,
        dst: str | None = None,
        circuit: int | None = None,
        note: str | None = None,
        frame: bool | None = None,
    ) -> TraceRecord | None:
        """The earliest record `find` would return, or None."""
        found = self.find(what, src=src, dst=dst, circuit=circuit, note=note, frame=frame)
        return found[0] if found else None

    def render(self, *, keepalives: bool = True, last: int | None = None) -> str:
        """The flow as text, one record a line (`keepalives=False` hides PING/PONG)."""
        records = self.records
        if not keepalives:
            records = [r for r in records if r.what not in ("PING", "PONG")]
        if last is not None:
            records = records[-last:]
        return "\n".join(r.render() for r in records)

    def __len__(self) -> int:
        return len(self.records)


def describe_frame(frame: Frame) -> tuple[str, str]:
    """(type name, note) for one frame, from what a router could see of it."""
    try:
        ftype = FrameType(frame.type)
    except ValueError:
        return hex(frame.type), ""
    payload = frame.payload
    note = ""
    try:
        if ftype == FrameType.DATA:
            note = f"len={len(payload)}" + (" FIN" if frame.flags & Flag.FIN else "")
        elif ftype == FrameType.CREDIT and len(payload) == _CREDIT.size:
            note = f"+{_CREDIT.unpack(payload)[0]}"
        elif ftype in _ERRORS:
            code, reason = decode_error(payload)
            note = f"{code.code}: {reason}"
        elif ftype in _NAMED:
            note = f"service={decode_control(payload).fields.get('service')}"
        elif ftype == FrameType.HELLO:
            fields = decode_control(payload).fields
            note = f"role={fields.get('role')} name={fields.get('name')}"
    except (WireError, ValueError):
        note = "undecodable payload"
    return ftype.name, note
