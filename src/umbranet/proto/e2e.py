"""The end-to-end session between a dialer and a host: Noise XX bound to SPIFFE identities.

Pattern Noise_XX_25519_AESGCM_SHA256 (AES-GCM: ~3x ChaCha20 on CPUs with AES-NI), prologue
`umbranet/1 <service>` so a handshake for one service cannot complete for another:

    dialer -> host   DIAL/CONNECT blob : e
    host -> dialer   ACCEPT blob       : e, ee, s, es + {"cert": host SVID, "ticket": bind ticket}
    dialer -> host   HANDSHAKE payload : s, se      + {"cert": dialer SVID, "ticket": dial ticket}

Each side then checks, against the trust bundle and at `now`, that the peer's certificate is a
valid SVID whose noise-key extension equals the static key that completed the handshake, and
that the peer's ticket names that same identity, this service and the right action. So a
router (which sees only ciphertext) can neither read the stream nor connect a peer the
controller did not authorize. Transport frames are sealed with the frame type and flags as
associated data, so a router cannot turn DATA into a FIN or drop a frame unnoticed (the nonce
counter would no longer match).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from umbranet.pki import PkiError, Ticket, TrustBundle
from umbranet.pki.tickets import Action
from umbranet.proto.noise import CipherState, HandshakeState, NoiseError
from umbranet.proto.peer_cache import verified_svid, verified_ticket
from umbranet.wire import ErrorCode, FrameType, decode_control, encode_control
from umbranet.wire.frames import WireError

PROTOCOL_NAME = "Noise_XX_25519_AESGCM_SHA256"
TAG_SIZE = 16
_AD_DATA = bytes([FrameType.DATA, 0])
_AD_FIN = bytes([FrameType.DATA, 1])


class E2EError(Exception):
    """The end-to-end handshake or a sealed frame failed; the circuit must be reset."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """Who is on the other end of a stream, as proven by its certificate and ticket."""

    name: str
    spiffe_id: str
    attributes: tuple[str, ...] = ()
    ticket_id: str = ""
    port: int | None = None  # the service port the dialer's ticket was granted for, if any


@dataclass(frozen=True, slots=True)
class LocalCredentials:
    """What an endpoint proves itself with: its SVID, its noise key, and the trust bundle."""

    cert_pem: bytes
    noise_private_key: bytes
    bundle: TrustBundle


# A host-side hook that may refuse an authenticated dialer (the policy engine plugs in here).
PeerCheck = Callable[[PeerIdentity, Ticket], str | None]


class E2ESession:
    """Seals and opens DATA payloads after the handshake; counters make replay impossible."""

    __slots__ = ("_open", "_seal")

    def __init__(self, send: CipherState, receive: CipherState) -> None:
        self._seal = send.encrypt_with_ad
        self._open = receive.decrypt_with_ad

    def seal(self, plaintext: bytes | memoryview, fin: bool = False) -> bytes:
        """Encrypt one DATA payload (at most 64 KiB of plaintext)."""
        return self._seal(_AD_FIN if fin else _AD_DATA, plaintext)

    def open(self, sealed: bytes | memoryview, fin: bool = False) -> bytes:
        """Decrypt one DATA payload; forged, replayed or reordered frames raise E2EError."""
        try:
            return self._open(_AD_FIN if fin else _AD_DATA, sealed)
        except NoiseError as exc:
            raise E2EError(ErrorCode.DECRYPT_FAILED, "sealed frame failed to open") from exc


@dataclass(slots=True)
class DialerHandshake:
    """The dialer's side: `start()` -> message 1; `finish(message 2, now)` -> message 3."""

    service: str
    ticket: str
    credentials: LocalCredentials
    _state: HandshakeState = field(init=False)

    def __post_init__(self) -> None:
        self._state = HandshakeState(
            PROTOCOL_NAME,
            initiator=True,
            prologue=_prologue(self.service),
            s=self.credentials.noise_private_key,
        )

    def start(self) -> bytes:
        """Noise message 1, carried in the DIAL frame."""
        return self._state.write_message(b"")

    def finish(self, message: bytes, now: datetime) -> tuple[bytes, E2ESession, PeerIdentity]:
        """Check the host's proof, answer with ours; returns (message 3, session, host)."""
        try:
            payload = self._state.read_message(message)
        except NoiseError as exc:
            raise E2EError(ErrorCode.HANDSHAKE_FAILED, f"host handshake: {exc}") from exc
        host = _verify_peer(
            payload,
            remote_static=self._state.remote_static,
            bundle=self.credentials.bundle,
            now=now,
            service=self.service,
            action=Action.BIND,
        )
        proof = encode_control({"cert": _leaf_pem(self.credentials), "ticket": self.ticket})
        final = self._state.write_message(proof)
        send, receive = self._state.split()
        return final, E2ESession(send, receive), host


@dataclass(slots=True)
class HostHandshake:
    """The host's side: `answer(message 1)` -> message 2; `finish(message 3, now)`."""

    service: str
    ticket: str
    credentials: LocalCredentials
    _state: HandshakeState = field(init=False)

    def __post_init__(self) -> None:
        self._state = HandshakeState(
            PROTOCOL_NAME,
            initiator=False,
            prologue=_prologue(self.service),
            s=self.credentials.noise_private_key,
        )

    def answer(self, message: bytes) -> bytes:
        """Read message 1 and return message 2 carrying our certificate and bind ticket."""
        try:
            self._state.read_message(message)
            proof = encode_control({"cert": _leaf_pem(self.credentials), "ticket": self.ticket})
            return self._state.write_message(proof)
        except NoiseError as exc:
            raise E2EError(ErrorCode.HANDSHAKE_FAILED, f"dialer handshake: {exc}") from exc

    def finish(
        self, message: bytes, now: datetime, expected_dialer: str | None = None
    ) -> tuple[E2ESession, PeerIdentity]:
        """Read message 3, check the dialer (and that it is who the router said), and split."""
        try:
            payload = self._state.read_message(message)
        except NoiseError as exc:
            raise E2EError(ErrorCode.HANDSHAKE_FAILED, f"dialer handshake: {exc}") from exc
        dialer = _verify_peer(
            payload,
            remote_static=self._state.remote_static,
            bundle=self.credentials.bundle,
            now=now,
            service=self.service,
            action=Action.DIAL,
        )
        if expected_dialer is not None and dialer.spiffe_id != expected_dialer:
            raise E2EError(
                ErrorCode.PEER_IDENTITY_MISMATCH,
                f"router announced {expected_dialer} but the handshake proved {dialer.spiffe_id}",
            )
        send, receive = self._state.split()
        return E2ESession(send, receive), dialer


def _prologue(service: str) -> bytes:
    return b"umbranet/1 " + service.encode()


def _leaf_pem(credentials: LocalCredentials) -> str:
    return credentials.cert_pem.decode()


def _verify_peer(
    payload: bytes,
    *,
    remote_static: bytes | None,
    bundle: TrustBundle,
    now: datetime,
    service: str,
    action: Action,
) -> PeerIdentity:
    """The identity checks both sides run on the peer's handshake payload."""
    try:
        proof = decode_control(payload)
        cert_pem = proof.str_field("cert", 16384).encode()
        token = proof.str_field("ticket", 8192)
    except WireError as exc:
        raise E2EError(ErrorCode.HANDSHAKE_FAILED, f"peer proof malformed: {exc.reason}") from exc
    try:
        peer = verified_svid(cert_pem, bundle, now)
        ticket = verified_ticket(token, bundle, now)
    except PkiError as exc:
        raise E2EError(ErrorCode.PEER_NOT_AUTHORIZED, f"peer proof rejected: {exc}") from exc
    if remote_static is None or peer.noise_public_key != remote_static:
        raise E2EError(
            ErrorCode.PEER_IDENTITY_MISMATCH,
            "peer's static key is not the one its certificate binds",
        )
    if ticket.spiffe_id != str(peer.spiffe_id):
        raise E2EError(ErrorCode.PEER_IDENTITY_MISMATCH, "peer's ticket names another identity")
    if ticket.service != service or ticket.action != action:
        raise E2EError(
            ErrorCode.PEER_NOT_AUTHORIZED,
            f"peer's ticket is for {ticket.action} {ticket.service}, not {action} {service}",
        )
    return PeerIdentity(
        name=peer.spiffe_id.name or str(peer.spiffe_id),
        spiffe_id=str(peer.spiffe_id),
        attributes=ticket.attributes,
        ticket_id=ticket.id,
        port=ticket.port,
    )
