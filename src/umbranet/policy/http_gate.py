"""The hosting endpoint's HTTP gate: find every request head in a byte stream and judge it.

Only the hosting endpoint sees request lines, so it enforces the policy's ``http`` rules. The
gate sits between the decrypted stream and the application: bytes reach the application only
after the head of the request they belong to was allowed. It frames HTTP/1.1 requests itself
(request line, headers, then a body by Content-Length or chunked encoding, see
`http_framing`), so every request on a keep-alive connection is judged, not just the first.

Sans-IO: `HttpGate.feed(data)` takes the dialer's bytes and returns those that may pass and,
when a request is refused or the stream is not valid HTTP/1.1, the `GateStop` to answer with
(403 with the policy's reason, 400, 431). `HttpGate.feed_response(data)` takes the
application's answer, which the gate reads but never changes. After a stop nothing more passes.

Switching protocols. A request asking for an Upgrade (or a CONNECT) is judged like any other,
but the bytes after it are *held*: the gate keeps framing what follows as HTTP until the
server's answer to that very request is known. Only a ``101 Switching Protocols`` (a 2xx for
CONNECT) turns the rest of the stream into an unexamined tunnel; any other answer means the
server stayed on HTTP/1.1, so the held bytes are judged as requests. Without this, a client
allowed ``GET /public`` could send it with ``Upgrade: h2c``, pipeline ``DELETE /admin`` behind
it, and a server that ignored the upgrade would serve the second request unjudged. Upgrades are
also limited to the protocols the gate is given (`upgrades`, WebSocket by default): after an
``h2c`` switch the gate could not read the HTTP/2 requests that follow, so asking for one is
refused (403, ``http_upgrade_denied``), and a server that switches to a protocol nobody was
allowed to ask for stops the stream (``http_upgrade_unverified``).

Rules of the two directions:

- request states: HEAD -> (BODY) -> HEAD ...; a switch request's body ends in HOLD;
  HOLD -> TUNNEL on its 101/2xx, HOLD -> HEAD on any other final answer; any -> STOPPED;
- the answers are matched to requests in order (HTTP/1.1 answers pipelined requests in order);
  interim 1xx answers other than 101 are skipped; HEAD, 204 and 304 answers carry no body;
- an answer the gate cannot frame, or one with no request to belong to, leaves the answer
  direction unreadable: from then on no switch is ever confirmed, so a request waiting in
  HOLD stops (``http_upgrade_unverified``) rather than guessing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto

from umbranet.policy.http_framing import (
    HEAD_END,
    Body,
    FramingError,
    RequestHead,
    parse_request_head,
    parse_response_head,
)
from umbranet.policy.verdict import Verdict

__all__ = [
    "DEFAULT_UPGRADES",
    "MAX_HEAD",
    "GateResult",
    "GateStop",
    "HttpGate",
    "render_stop",
]

MAX_HEAD = 64 * 1024
DEFAULT_UPGRADES = frozenset({"websocket"})

Decide = Callable[[str, str], Verdict]
"""(method, path) -> verdict; the caller binds the dialer's identity and the service's rules."""


@dataclass(frozen=True, slots=True)
class GateStop:
    """Why the gate stopped the stream, and the HTTP status to answer with."""

    status: int
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class GateResult:
    passed: bytes
    stop: GateStop | None = None


class _State(Enum):
    HEAD = auto()
    BODY = auto()
    HOLD = auto()
    TUNNEL = auto()
    STOPPED = auto()


class _Answer(Enum):
    HEAD = auto()
    BODY = auto()
    SWITCHED = auto()  # after a 101 or a CONNECT's 2xx: no more HTTP in this direction
    UNREADABLE = auto()  # an answer the gate could not frame: nothing more is confirmed


@dataclass(slots=True)
class _Pending:
    """A request passed to the application and not yet answered."""

    method: str
    upgrade: tuple[str, ...]
    answered: bool = False
    switched: bool = False

    @property
    def switches(self) -> bool:
        return self.method == "CONNECT" or bool(self.upgrade)


class HttpGate:
    """One connection's gate; `requests` counts the heads judged so far."""

    def __init__(
        self,
        decide: Decide,
        max_head: int = MAX_HEAD,
        upgrades: frozenset[str] = DEFAULT_UPGRADES,
    ) -> None:
        self._decide = decide
        self._max_head = max_head
        self._upgrades = upgrades
        self._state = _State.HEAD
        self._buffer = bytearray()
        self._body = Body(chunked=False, length=0)
        self._current: _Pending | None = None  # the request whose body is being passed
        self._held_for: _Pending | None = None  # the switch request HOLD waits on
        self._pending: deque[_Pending] = deque()
        self._answer = _Answer.HEAD
        self._answer_buffer = bytearray()
        self._answer_body = Body(chunked=False, length=0)
        self.requests = 0

    @property
    def holding(self) -> bool:
        """Bytes wait for the server's answer to a switch request: feed no more until it comes."""
        return self._state is _State.HOLD

    @property
    def stopped(self) -> bool:
        return self._state is _State.STOPPED

    @property
    def unanswered(self) -> int:
        """Requests passed to the application whose answers are not complete yet (while the
        answers stay readable): a stop's own answer must go out after them, not among them."""
        if self._answer in (_Answer.SWITCHED, _Answer.UNREADABLE):
            return 0
        return len(self._pending)

    def feed(self, data: bytes) -> GateResult:
        """Take the next bytes from the dialer; return what may reach the application."""
        if self._state is _State.STOPPED:
            return GateResult(b"")
        self._buffer += data
        return self._run()

    def feed_response(self, data: bytes) -> GateResult:
        """Read the application's next answer bytes; return dialer bytes they released."""
        if self._state is _State.STOPPED:
            self._read_answers(data)  # still counted: see `unanswered`
            return GateResult(b"")
        stop = self._read_answers(data)
        if stop is not None:
            return self._stop(bytearray(), stop)
        return self._run()

    # -- the request direction: each step returns True (progress), False (needs more input
    # -- or an answer) or the stop -------------------------------------------------------

    def _run(self) -> GateResult:
        passed = bytearray()
        while self._buffer or self._state is _State.HOLD:
            outcome = self._step(passed)
            if isinstance(outcome, GateStop):
                return self._stop(passed, outcome)
            if not outcome:
                break
        return GateResult(bytes(passed))

    def _stop(self, passed: bytearray, stop: GateStop) -> GateResult:
        self._state = _State.STOPPED
        self._buffer.clear()
        return GateResult(bytes(passed), stop)

    def _step(self, passed: bytearray) -> GateStop | bool:
        state = self._state
        if state is _State.HEAD:
            return self._head(passed)
        if state is _State.BODY:
            progress = self._body.step(self._buffer, passed, self._max_head)
            if isinstance(progress, FramingError):
                return _malformed(progress)
            if self._body.done:
                self._request_done()
                return True
            return progress
        if state is _State.HOLD:
            return self._hold()
        if state is _State.TUNNEL:
            passed += self._buffer
            self._buffer.clear()
            return True
        return False

    def _head(self, passed: bytearray) -> GateStop | bool:
        blank = len(self._buffer) - len(self._buffer.lstrip(b"\r\n"))
        if blank:
            del self._buffer[:blank]  # blank lines between requests are allowed (RFC 9112)
            return bool(self._buffer)
        found = HEAD_END.search(self._buffer)
        if found is None:
            if len(self._buffer) > self._max_head:
                return GateStop(431, "http_head_too_large", "request head too large")
            return False
        end = found.end()
        if end > self._max_head:
            return GateStop(431, "http_head_too_large", "request head too large")
        head = bytes(self._buffer[:end])
        parsed = parse_request_head(head)
        if isinstance(parsed, FramingError):
            return _malformed(parsed)
        self.requests += 1
        verdict = self._decide(parsed.method, parsed.path)
        if not verdict.allowed:
            return GateStop(403, "http_denied", verdict.reason)
        refused = self._refused_upgrade(parsed)
        if refused is not None:
            return refused
        passed += head
        del self._buffer[:end]
        self._current = _Pending(parsed.method, parsed.upgrade)
        self._pending.append(self._current)
        self._body = Body(chunked=parsed.chunked, length=parsed.length)
        self._state = _State.BODY
        if self._body.done:
            self._request_done()
        return True

    def _refused_upgrade(self, head: RequestHead) -> GateStop | None:
        denied = [p for p in head.upgrade if p not in self._upgrades]
        if not denied:
            return None
        allowed = ", ".join(sorted(self._upgrades)) or "none"
        reason = f"upgrade to {denied[0][:40]!r} is not allowed here (allowed: {allowed})"
        return GateStop(403, "http_upgrade_denied", reason)

    def _request_done(self) -> None:
        current, self._current = self._current, None
        if current is None or not current.switches:
            self._state = _State.HEAD
        elif current.switched:
            self._state = _State.TUNNEL
        elif current.answered:
            self._state = _State.HEAD  # the server answered without switching
        else:
            self._state, self._held_for = _State.HOLD, current

    def _hold(self) -> GateStop | bool:
        waiting = self._held_for
        if waiting is None or waiting.answered:
            self._held_for = None
            self._state = _State.TUNNEL if waiting and waiting.switched else _State.HEAD
            return True
        if self._answer is _Answer.UNREADABLE:
            return _unverified("the server's answer to the upgrade request could not be read")
        if len(self._buffer) > 2 * self._max_head:
            return GateStop(431, "http_head_too_large", "too much data before the upgrade answer")
        return False

    # -- the answer direction: read only, to learn where each answer ends ------------------

    def _read_answers(self, data: bytes) -> GateStop | None:
        if self._answer in (_Answer.SWITCHED, _Answer.UNREADABLE):
            return None
        buffer = self._answer_buffer
        buffer += data
        sink = bytearray()
        while buffer and self._answer in (_Answer.HEAD, _Answer.BODY):
            if self._answer is _Answer.BODY:
                progress = self._answer_body.step(buffer, sink, self._max_head)
                sink.clear()
                if isinstance(progress, FramingError):
                    self._unreadable()
                elif self._answer_body.done:
                    self._answered(switched=False)
                elif not progress:
                    break
                continue
            outcome = self._answer_head()
            if isinstance(outcome, GateStop):
                return outcome
            if not outcome:
                break
        return None

    def _answer_head(self) -> GateStop | bool:
        buffer = self._answer_buffer
        blank = len(buffer) - len(buffer.lstrip(b"\r\n"))
        if blank:
            del buffer[:blank]
            return bool(buffer)
        found = HEAD_END.search(buffer)
        if found is None:
            if len(buffer) > self._max_head:
                self._unreadable()
            return False
        head = parse_response_head(bytes(buffer[: found.end()]))
        del buffer[: found.end()]
        request = next((p for p in self._pending if not p.answered), None)
        if isinstance(head, FramingError) or request is None:
            self._unreadable()
            return False
        if head.status == 101:
            return self._switch(request, head.upgrade)
        if head.status < 200:
            return True  # interim (100 Continue, 103 Early Hints): the final answer follows
        if request.method == "CONNECT" and head.status < 300:
            return self._switch(request, ())
        if request.method == "HEAD" or head.status in (204, 304):
            self._answered(switched=False)
            return True
        self._answer_body = Body(
            chunked=head.chunked,
            length=head.length or 0,
            until_close=head.until_close or (head.length is None and not head.chunked),
        )
        self._answer = _Answer.BODY
        if self._answer_body.done:
            self._answered(switched=False)
        return True

    def _switch(self, request: _Pending, chosen: tuple[str, ...]) -> GateStop | bool:
        if request.method != "CONNECT":
            offered = set(request.upgrade) & self._upgrades
            if not request.upgrade or len(chosen) != 1 or chosen[0] not in offered:
                shown = chosen[0][:40] if chosen else "nothing"
                return _unverified(f"the server switched to {shown!r}, which was not allowed")
        self._answered(switched=True)
        self._answer = _Answer.SWITCHED
        self._answer_buffer.clear()
        return True

    def _answered(self, *, switched: bool) -> None:
        request = self._pending.popleft()
        request.answered, request.switched = True, switched
        if not switched:
            self._answer = _Answer.HEAD

    def _unreadable(self) -> None:
        self._answer = _Answer.UNREADABLE
        self._answer_buffer.clear()


def _malformed(error: FramingError) -> GateStop:
    code = "http_head_too_large" if error.status == 431 else "http_malformed"
    return GateStop(error.status, code, error.reason)


def _unverified(reason: str) -> GateStop:
    return GateStop(502, "http_upgrade_unverified", reason)


def render_stop(stop: GateStop) -> bytes:
    """The HTTP response for a stop: status, the reason as text, and the connection closed."""
    phrase = {
        400: "Bad Request",
        403: "Forbidden",
        431: "Request Header Fields Too Large",
        502: "Bad Gateway",
    }
    body = f"{stop.reason}\n".encode()
    reason_header = stop.reason.encode("ascii", "replace")[:512].replace(b"\r", b" ")
    reason_header = reason_header.replace(b"\n", b" ")
    return b"".join(
        [
            f"HTTP/1.1 {stop.status} {phrase.get(stop.status, 'Error')}\r\n".encode(),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            f"Content-Length: {len(body)}\r\n".encode(),
            b"Connection: close\r\n",
            b"X-Umbra-Code: " + stop.code.encode() + b"\r\n",
            b"X-Umbra-Reason: " + reason_header + b"\r\n\r\n",
            body,
        ]
    )
