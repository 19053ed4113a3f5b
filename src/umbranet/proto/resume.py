"""Resuming an end-to-end session on a new circuit: messages, keys, and the session table.

A stream's end-to-end session outlives its circuit. When a router on the path dies, both
endpoints keep the session (keys, unacknowledged bytes, what they received) and the dialer
opens a new circuit through any router that still reaches the host, proving with the
session's keys that it is the same dialer. Routers see a normal DIAL/CONNECT, ACCEPT,
HANDSHAKE (the ticket is checked again, by the first router and by the host), with these
messages as the opaque blobs where Noise messages would be:

    dialer -> host   DIAL/CONNECT blob : RESUME    sid, gen, nonce_d, received_d, fin_d, mac
    host -> dialer   ACCEPT blob       : RESUME_OK nonce_h, received_h, fin_h, mac
    dialer -> host   HANDSHAKE payload : CONFIRM   mac

Layouts (big-endian; every message starts with MAGIC and a kind byte, and none is 32 bytes
long, the length of the Noise message 1 it replaces):

    RESUME    | MAGIC 4 | kind=1 | sid 16 | gen u32 | nonce 16 | received u64 | fin u8 | mac 32 |
    RESUME_OK | MAGIC 4 | kind=2 | nonce 16 | received u64 | fin u8 | mac 32 |
    CONFIRM   | MAGIC 4 | kind=3 | mac 32 |

`sid` names the session (derived from its secret; it proves nothing). Each mac is keyed
BLAKE2s-256 under a key derived from the session's resumption secret (exported from the Noise
chaining key, so only the two endpoints hold it), over everything sent so far in this exchange.
The new circuit's keys are derived from the secret, both fresh nonces and the generation, so no
key and nonce pair is ever reused across circuits and a transcript cannot be spliced into another.

Why a router cannot resume, splice or replay: it cannot produce a mac; a RESUME whose `gen` is
not above every generation the host has seen for that session is refused (`replayed`)
before anything moves; and the host sends nothing under the new keys until CONFIRM proves the
dialer saw the host's fresh nonce.

`received` is the authoritative acknowledgement: the count of plaintext bytes of the peer's
direction this side holds. The sender resends from exactly there (its retransmit buffer,
`proto/retain.py`), so every byte arrives once and in order; `fin` says whether the peer's FIN
arrived, so a FIN lost with the old circuit is sent again.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import blake2s as _blake2s

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from umbranet.wire import ErrorCode

__all__ = [
    "CONFIRM_SIZE",
    "MAGIC",
    "RESUME_OK_SIZE",
    "RESUME_SIZE",
    "Confirm",
    "Resume",
    "ResumeOk",
    "ResumeSecret",
    "is_resume_blob",
]

MAGIC = b"UMR\x01"
KIND_RESUME = 1
KIND_RESUME_OK = 2
KIND_CONFIRM = 3
SID_SIZE = 16
NONCE_SIZE = 16
MAC_SIZE = 32
_HEAD = struct.Struct("!4sB")
_RESUME = struct.Struct(f"!4sB{SID_SIZE}sI{NONCE_SIZE}sQB")
_RESUME_OK = struct.Struct(f"!4sB{NONCE_SIZE}sQB")
RESUME_SIZE = _RESUME.size + MAC_SIZE
RESUME_OK_SIZE = _RESUME_OK.size + MAC_SIZE
CONFIRM_SIZE = _HEAD.size + MAC_SIZE
# A Noise XX message 1 is one ephemeral key: a blob of this length is a new session.
NOISE_MESSAGE_1 = 32


class ResumeError(Exception):
    """A resume message is malformed, forged or replayed; the attempt is refused."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.code}: {reason}")
        self.code = code
        self.reason = reason


def is_resume_blob(blob: bytes | memoryview) -> bool:
    """Whether a DIAL/CONNECT blob is a RESUME rather than a Noise message 1."""
    return len(blob) == RESUME_SIZE and bytes(blob[:5]) == MAGIC + bytes([KIND_RESUME])


def _mac(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2s-256 (a PRF and MAC by design, as WireGuard uses it; every key here is 32
    bytes): a third of HMAC-SHA256's cost, and an in-session dial computes sixteen of these
    across its two ends."""
    return _blake2s(data, key=key).digest()


@dataclass(frozen=True, slots=True)
class ResumeSecret:
    """What both ends keep of a session to resume it: the secret and the ids derived from
    it. `secret` never leaves the endpoint; `sid` is sent in clear (it only names)."""

    secret: bytes = field(repr=False)  # a key: never in a log line or a traceback's repr
    # Derived once: every OPEN, OPEN_OK, RESUME and CONFIRM of the session uses them. The
    # sid at once (the session table files every stream under it); the mac key when first
    # used, as most streams opened inside a session never resume nor open streams.
    sid: bytes = field(init=False, repr=False)
    _mac_key: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        object.__setattr__(self, "sid", _mac(self.secret, b"umbranet sid")[:SID_SIZE])

    @property
    def mac_key(self) -> bytes:
        """The key of every mac in the session's OPEN, RESUME and CONFIRM messages."""
        key = self._mac_key
        if not key:
            key = _mac(self.secret, b"umbranet resume mac")
            object.__setattr__(self, "_mac_key", key)
        return key

    def circuit_keys(self, transcript: bytes) -> tuple[bytes, bytes]:
        """(dialer -> host key, host -> dialer key) of the circuit this exchange opened."""
        return (
            _mac(self.secret, b"umbranet d2h " + transcript),
            _mac(self.secret, b"umbranet h2d " + transcript),
        )


@dataclass(frozen=True, slots=True)
class Resume:
    """The dialer's request to move session `sid` to the circuit this message opens."""

    sid: bytes
    gen: int
    nonce: bytes
    received: int
    fin: bool
    raw: bytes = b""

    @classmethod
    def build(
        cls, secret: ResumeSecret, gen: int, nonce: bytes, received: int, fin: bool
    ) -> Resume:
        body = _RESUME.pack(MAGIC, KIND_RESUME, secret.sid, gen, nonce, received, int(fin))
        return cls(secret.sid, gen, nonce, received, fin, body + _mac(secret.mac_key, body))

    @classmethod
    def parse(cls, blob: bytes | memoryview) -> Resume:
        raw = bytes(blob)
        if len(raw) != RESUME_SIZE:
            raise ResumeError(ErrorCode.RESUME_REFUSED, "RESUME of the wrong length")
        magic, kind, sid, gen, nonce, received, fin = _RESUME.unpack_from(raw)
        if magic != MAGIC or kind != KIND_RESUME or fin > 1:
            raise ResumeError(ErrorCode.RESUME_REFUSED, "not a RESUME message")
        return cls(sid, gen, nonce, received, bool(fin), raw)

    def verify(self, secret: ResumeSecret) -> None:
        body, mac = self.raw[:-MAC_SIZE], self.raw[-MAC_SIZE:]
        if not hmac.compare_digest(mac, _mac(secret.mac_key, body)):
            raise ResumeError(ErrorCode.RESUME_REFUSED, "RESUME not sealed by the session")


@dataclass(frozen=True, slots=True)
class ResumeOk:
    """The host's answer: its fresh nonce and what it received, bound to the RESUME."""

    nonce: bytes
    received: int
    fin: bool
    raw: bytes = b""

    @classmethod
    def build(
        cls, secret: ResumeSecret, resume: Resume, nonce: bytes, received: int, fin: bool
    ) -> ResumeOk:
        body = _RESUME_OK.pack(MAGIC, KIND_RESUME_OK, nonce, received, int(fin))
        return cls(nonce, received, fin, body + _mac(secret.mac_key, resume.raw + body))

    @classmethod
    def parse(cls, blob: bytes | memoryview, secret: ResumeSecret, resume: Resume) -> ResumeOk:
        raw = bytes(blob)
        if len(raw) != RESUME_OK_SIZE:
            raise ResumeError(ErrorCode.RESUME_REFUSED, "RESUME_OK of the wrong length")
        magic, kind, nonce, received, fin = _RESUME_OK.unpack_from(raw)
        body, mac = raw[:-MAC_SIZE], raw[-MAC_SIZE:]
        if magic != MAGIC or kind != KIND_RESUME_OK or fin > 1:
            raise ResumeError(ErrorCode.RESUME_REFUSED, "not a RESUME_OK message")
        if not hmac.compare_digest(mac, _mac(secret.mac_key, resume.raw + body)):
            raise ResumeError(ErrorCode.RESUME_REFUSED, "RESUME_OK not sealed by the session")
        return cls(nonce, received, bool(fin), raw)


class Confirm:
    """The dialer's proof that it saw RESUME_OK: only then does the host use the new keys."""

    @staticmethod
    def build(secret: ResumeSecret, request: bytes, answer: bytes) -> bytes:
        """CONFIRM of an exchange: `request` (RESUME or OPEN header), `answer` (its reply)."""
        head = _HEAD.pack(MAGIC, KIND_CONFIRM)
        return head + _mac(secret.mac_key, request + answer + head)

    @staticmethod
    def verify(
        blob: bytes | memoryview, secret: ResumeSecret, request: bytes, answer: bytes
    ) -> None:
        if not hmac.compare_digest(bytes(blob), Confirm.build(secret, request, answer)):
            raise ResumeError(ErrorCode.RESUME_REFUSED, "CONFIRM not sealed by the session")


# -- streams opened inside an existing session (0-RTT) ----------------------------------------

KIND_OPEN = 4
KIND_OPEN_OK = 5
# The most application data that may ride with an OPEN (sealed, inside the DIAL frame).
EARLY_DATA_MAX = 16 * 1024
_OPEN = struct.Struct(f"!4sB{SID_SIZE}sI{NONCE_SIZE}sH")
_OPEN_OK = struct.Struct(f"!4sB{NONCE_SIZE}s")
OPEN_HEADER_SIZE = _OPEN.size + MAC_SIZE
OPEN_OK_SIZE = _OPEN_OK.size + MAC_SIZE
_EARLY_TAG = 16
_ZERO_NONCE = bytes(12)


def is_open_blob(blob: bytes | memoryview) -> bool:
    """Whether a DIAL/CONNECT blob opens a stream inside an existing session."""
    return OPEN_HEADER_SIZE <= len(
        blob
    ) <= OPEN_HEADER_SIZE + EARLY_DATA_MAX + _EARLY_TAG and bytes(blob[:5]) == MAGIC + bytes(
        [KIND_OPEN]
    )


@dataclass(frozen=True, slots=True)
class Open:
    """The dialer opens stream number `stream` of session `sid`, with early data sealed."""

    sid: bytes
    stream: int
    nonce: bytes
    port: int | None
    header: bytes  # everything up to and including the mac
    sealed: bytes  # the early data, AES-GCM under a key of the session and this header

    @classmethod
    def build(
        cls, secret: ResumeSecret, stream: int, nonce: bytes, port: int | None, early: bytes
    ) -> Open:
        if len(early) > EARLY_DATA_MAX:
            raise ValueError(f"early data over {EARLY_DATA_MAX} bytes")
        body = _OPEN.pack(MAGIC, KIND_OPEN, secret.sid, stream, nonce, port or 0)
        header = body + _mac(secret.mac_key, body)
        # One key per OPEN (the header has a fresh nonce), so the zero AEAD nonce is safe.
        key = _mac(secret.secret, b"umbranet early " + header)
        sealed = AESGCM(key).encrypt(_ZERO_NONCE, early, header)
        return cls(secret.sid, stream, nonce, port, header, sealed)

    @classmethod
    def parse(cls, blob: bytes | memoryview) -> Open:
        raw = bytes(blob)
        if not is_open_blob(raw) or len(raw) < OPEN_HEADER_SIZE + _EARLY_TAG:
            raise ResumeError(ErrorCode.RESUME_REFUSED, "not an OPEN message")
        _, _, sid, stream, nonce, port = _OPEN.unpack_from(raw)
        header = raw[:OPEN_HEADER_SIZE]
        return cls(sid, stream, nonce, port or None, header, raw[OPEN_HEADER_SIZE:])

    @property
    def raw(self) -> bytes:
        return self.header + self.sealed

    def verify(self, secret: ResumeSecret) -> bytes:
        """Check the mac and return the early data (ResumeError if either fails)."""
        body, mac = self.header[:-MAC_SIZE], self.header[-MAC_SIZE:]
        if not hmac.compare_digest(mac, _mac(secret.mac_key, body)):
            raise ResumeError(ErrorCode.RESUME_REFUSED, "OPEN not sealed by the session")
        key = _mac(secret.secret, b"umbranet early " + self.header)
        try:
            return AESGCM(key).decrypt(_ZERO_NONCE, self.sealed, self.header)
        except InvalidTag as exc:
            raise ResumeError(ErrorCode.RESUME_REFUSED, "early data failed to open") from exc

    def stream_secret(self, secret: ResumeSecret, ok: bytes) -> ResumeSecret:
        """The new stream's own secret (for its keys and its own resumes)."""
        return ResumeSecret(_mac(secret.secret, b"umbranet stream " + self.header + ok))


@dataclass(frozen=True, slots=True)
class OpenOk:
    """The host's answer to an OPEN: its fresh nonce, bound to the OPEN."""

    nonce: bytes
    raw: bytes

    @classmethod
    def build(cls, secret: ResumeSecret, open_: Open, nonce: bytes) -> OpenOk:
        body = _OPEN_OK.pack(MAGIC, KIND_OPEN_OK, nonce)
        return cls(nonce, body + _mac(secret.mac_key, open_.header + body))

    @classmethod
    def parse(cls, blob: bytes | memoryview, secret: ResumeSecret, open_: Open) -> OpenOk:
        raw = bytes(blob)
        if len(raw) != OPEN_OK_SIZE:
            raise ResumeError(ErrorCode.RESUME_REFUSED, "OPEN_OK of the wrong length")
        magic, kind, nonce = _OPEN_OK.unpack_from(raw)
        body, mac = raw[:-MAC_SIZE], raw[-MAC_SIZE:]
        if magic != MAGIC or kind != KIND_OPEN_OK:
            raise ResumeError(ErrorCode.RESUME_REFUSED, "not an OPEN_OK message")
        if not hmac.compare_digest(mac, _mac(secret.mac_key, open_.header + body)):
            raise ResumeError(ErrorCode.RESUME_REFUSED, "OPEN_OK not sealed by the session")
        return cls(nonce, raw)


Entropy = Callable[[int], bytes]
