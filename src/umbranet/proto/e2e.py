"""The end-to-end session between a dialer and a host: Noise XX bound to SPIFFE identities.

Pattern Noise_XX_25519_AESGCM_SHA256 (AES-GCM: ~3x ChaCha20 on CPUs with AES-NI), prologue
`umbranet/2 <service>` so a handshake for one service (or one protocol version) cannot
complete for another:

    dialer -> host   DIAL/CONNECT blob : e
    host -> dialer   ACCEPT blob       : e, ee, s, es + {"cert": host SVID, "ticket": bind ticket}
    dialer -> host   HANDSHAKE payload : s, se      + {"cert": dialer SVID, "ticket": dial
                                                       ticket, "port"?: the port it asks for}

Each side then checks, against the trust bundle and at `now`, that the peer's certificate is a
valid SVID whose noise-key extension equals the static key that completed the handshake, and
that the peer's ticket names that same identity, this service and the right action. The host
also checks the dial ticket against what it knows and the router cannot vouch for: the ticket
is not older than the newest revocation epoch the host heard of (`ticket_stale`), it is bound
to the certificate that proved it when the controller binds tickets (`ticket_unbound`), and it
grants the port the dialer asked for (`port_not_granted`). So a router (which sees only
ciphertext) can neither read the stream nor connect a peer the controller did not authorize.
The dialer keeps only the host's identity: the host's attributes are not the dialer's business.

Transport frames are sealed with associated data `[type, flags, direction]` (direction 0:
dialer -> host, 1: host -> dialer), so a router cannot turn DATA into a FIN or an abort, flip
a key phase, or reflect a frame back, and the implicit nonce counter rejects a dropped,
replayed or reordered frame. Each direction moves to a new key (Noise `Rekey`: derived from
the current key, nothing sent) after `RekeyLimits.bytes` sealed bytes or `RekeyLimits.after`
of key age, whichever comes first; the first frame under the new key flips the KEY_PHASE flag,
so both ends switch at exactly the same frame. A receiver refuses more than
`RekeyLimits.receive_max` bytes under one key (`key_limit_exceeded`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from umbranet.pki import PkiError, Ticket, TrustBundle, load_chain
from umbranet.pki.tickets import TICKET_PREFIX, Action
from umbranet.pki.tokens import TokenFormatError, decode_token
from umbranet.proto.noise import CipherState, HandshakeState, NoiseError
from umbranet.proto.peer_cache import verified_svid, verified_ticket
from umbranet.proto.resume import ResumeSecret
from umbranet.wire import ErrorCode, Flag, FrameType, decode_control, encode_control
from umbranet.wire.control import ControlPayload
from umbranet.wire.frames import WireError

PROTOCOL_NAME = "Noise_XX_25519_AESGCM_SHA256"
PROLOGUE = b"umbranet/2 "
RESUME_LABEL = b"umbranet resume"
TAG_SIZE = 16
DIALER_TO_HOST = 0
HOST_TO_DIALER = 1
# Every flag a DATA frame may carry; any other bit is refused, not ignored.
DATA_FLAGS = int(Flag.FIN | Flag.KEY_PHASE | Flag.ABORT)
_KEY_PHASE = int(Flag.KEY_PHASE)
_NOT_DATA_FLAGS = ~DATA_FLAGS
# Associated data per direction, indexed by the frame's flags: built once, not per frame.
_AD = tuple(
    tuple(bytes([FrameType.DATA, flags, direction]) for flags in range(DATA_FLAGS + 1))
    for direction in (DIALER_TO_HOST, HOST_TO_DIALER)
)
# A sender never seals more than this under one key (AES-GCM with 64 KiB frames stays far
# inside its bounds); receivers enforce it so a peer that never rekeys is cut off.
MAX_BYTES_PER_KEY = 1 << 32


@dataclass(frozen=True, slots=True)
class RekeyLimits:
    """When a sender moves to its next key, and what a receiver tolerates under one key."""

    bytes: int = 1 << 30
    after: timedelta = timedelta(minutes=10)
    receive_max: int = MAX_BYTES_PER_KEY

    def __post_init__(self) -> None:
        if not 0 < self.bytes <= MAX_BYTES_PER_KEY - (1 << 17):
            raise ValueError("rekey byte limit must be positive and below the protocol bound")
        if self.after <= timedelta(0):
            raise ValueError("rekey time limit must be positive")


# Frozen, so every session without limits of its own shares one (not one per stream).
_DEFAULT_LIMITS = RekeyLimits()


class E2EError(Exception):
    """The end-to-end handshake or a sealed frame failed; the circuit must be reset."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.code}: {reason}")
        self.code = code
        self.reason = reason
        # Set when the handshake completed but the peer was refused: the keys to seal the
        # refusal with, so the peer can tell it from a RESET a router made up.
        self.session: E2ESession | None = None


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
    noise_private_key: bytes = field(repr=False)  # never in a log line or a repr
    bundle: TrustBundle


# A host-side hook that may refuse an authenticated dialer (the policy engine plugs in here).
PeerCheck = Callable[[PeerIdentity, Ticket], str | None]


class E2ESession:
    """Seals and opens DATA payloads after the handshake, and moves each direction to a new
    key after `RekeyLimits` (see the module doc); counters make replay impossible."""

    __slots__ = ("_ad_in", "_ad_out", "_deadline", "_limits", "_now", "_open", "_receive",
                 "_receive_max", "_received", "_recv_phase", "_seal", "_send", "_send_left",
                 "_send_phase", "rekeys_received", "rekeys_sent", "resume")  # fmt: skip

    def __init__(
        self,
        send: CipherState,
        receive: CipherState,
        *,
        dialer: bool,
        now: datetime,
        limits: RekeyLimits | None = None,
    ) -> None:
        self._send = send
        self._receive = receive
        self._seal = send.encrypt_with_ad
        self._open = receive.decrypt_with_ad
        out, into = (DIALER_TO_HOST, HOST_TO_DIALER) if dialer else (HOST_TO_DIALER, DIALER_TO_HOST)
        self._ad_out = _AD[out]
        self._ad_in = _AD[into]
        self._limits = limits or _DEFAULT_LIMITS
        self._now = now
        self._deadline = now + self._limits.after
        # Sealed bytes the send key may still take, counted down so a seal tests one number
        # (0 once the key is too old: the next seal rekeys).
        self._send_left = self._limits.bytes
        self._send_phase = 0
        self._recv_phase = 0
        self._received = 0  # sealed bytes under the current receive key
        self._receive_max = self._limits.receive_max
        self.rekeys_sent = 0
        self.rekeys_received = 0
        # The secret to move this session to another circuit (`proto/resume.py`); None for
        # a session that cannot move.
        self.resume: ResumeSecret | None = None

    def tick(self, now: datetime) -> None:
        """Learn the time: once the send key is older than the limit, the next seal rekeys."""
        self._now = now
        if now >= self._deadline:
            self._send_left = 0

    @property
    def rekey_deadline(self) -> datetime:
        """When the send key reaches its age limit (for the circuit's `poll_timeout`)."""
        return self._deadline

    def seal(self, plaintext: bytes | memoryview, flags: int = 0) -> tuple[int, bytes]:
        """Encrypt one DATA payload (at most 64 KiB of plaintext) -> (frame flags, sealed).

        The returned flags carry the key phase: the header must use them, as the associated
        data binds them.
        """
        if self._send_left <= 0:
            self._next_send_key()
        flags |= self._send_phase
        sealed = self._seal(self._ad_out[flags], plaintext)
        self._send_left -= len(sealed)
        return flags, sealed

    def open(self, sealed: bytes | memoryview, flags: int = 0) -> bytes:
        """Decrypt one DATA payload; forged, replayed or reordered frames raise E2EError."""
        # Flags equal to the current key phase (the usual frame) need neither test below.
        if flags != self._recv_phase:
            if flags & _NOT_DATA_FLAGS:
                raise E2EError(ErrorCode.PROTOCOL_ERROR, f"unknown DATA flags {flags:#x}")
            if (flags & _KEY_PHASE) != self._recv_phase:
                # The peer moved to its next key with this frame; a forged flip fails to open.
                self._receive.rekey()
                self._recv_phase ^= _KEY_PHASE
                self._received = 0
                self.rekeys_received += 1
        received = self._received = self._received + len(sealed)
        if received > self._receive_max:
            raise E2EError(
                ErrorCode.KEY_LIMIT_EXCEEDED,
                f"peer sealed over {self._receive_max} bytes under one key",
            )
        try:
            return self._open(self._ad_in[flags], sealed)
        except NoiseError as exc:
            raise E2EError(ErrorCode.DECRYPT_FAILED, "sealed frame failed to open") from exc

    def _next_send_key(self) -> None:
        self._send.rekey()
        self._send_phase ^= _KEY_PHASE
        self._send_left = self._limits.bytes
        self._deadline = self._now + self._limits.after
        self.rekeys_sent += 1


@dataclass(slots=True)
class DialerHandshake:
    """The dialer's side: `start()` -> message 1; `finish(message 2, now)` -> message 3.

    `port` is the service port the dialer asks for; it travels sealed in message 3 and the
    host refuses it unless the dial ticket grants exactly that port.
    """

    service: str
    ticket: str
    credentials: LocalCredentials
    port: int | None = None
    limits: RekeyLimits | None = None
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
        proven, bind, _ = _verify_peer(
            payload,
            remote_static=self._state.remote_static,
            bundle=self.credentials.bundle,
            now=now,
            service=self.service,
            action=Action.BIND,
        )
        own_epoch = ticket_epoch(self.ticket)
        if bind.epoch > own_epoch:
            # The host would refuse our ticket after the handshake, when the stream is
            # already the application's; failing here lets the dial retry with a fresh one.
            raise E2EError(
                ErrorCode.TICKET_STALE,
                f"the host is at epoch {bind.epoch}, our dial ticket at {own_epoch}",
            )
        fields: dict[str, object] = {"cert": _leaf_pem(self.credentials), "ticket": self.ticket}
        if self.port is not None:
            fields["port"] = self.port
        final = self._state.write_message(encode_control(fields))
        secret = ResumeSecret(self._state.export_secret(RESUME_LABEL))
        send, receive = self._state.split()
        session = E2ESession(send, receive, dialer=True, now=now, limits=self.limits)
        session.resume = secret
        # Only who the host is: its bind ticket proved the right to serve, and its attributes
        # and ticket id are the host's own business.
        host = PeerIdentity(name=proven.name, spiffe_id=proven.spiffe_id)
        return final, session, host


@dataclass(slots=True)
class HostHandshake:
    """The host's side: `answer(message 1)` -> message 2; `finish(message 3, now)`.

    What the host knows that a router cannot vouch for: `min_epoch`, the newest revocation
    epoch it heard of (from its controller's events or its own bind ticket); `ports`, the
    service ports it serves (None: it does not serve by port); `require_bound`, whether the
    controller binds tickets to certificates (then an unbound dial ticket is refused).
    """

    service: str
    ticket: str
    credentials: LocalCredentials
    min_epoch: int = 0
    ports: frozenset[int] | None = None
    require_bound: bool = False
    limits: RekeyLimits | None = None
    _noise: HandshakeState | None = None

    @property
    def _state(self) -> HandshakeState:
        # Built on first use: a stream opened inside a session only checks its ticket here,
        # and loading the static key is most of what building the state costs.
        if self._noise is None:
            self._noise = HandshakeState(
                PROTOCOL_NAME,
                initiator=False,
                prologue=_prologue(self.service),
                s=self.credentials.noise_private_key,
            )
        return self._noise

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
        try:
            dialer, ticket, port = self._check_dialer(payload, now, expected_dialer)
        except E2EError as exc:
            send, receive = self._state.split()
            exc.session = E2ESession(send, receive, dialer=False, now=now, limits=self.limits)
            raise
        secret = ResumeSecret(self._state.export_secret(RESUME_LABEL))
        send, receive = self._state.split()
        session = E2ESession(send, receive, dialer=False, now=now, limits=self.limits)
        session.resume = secret
        return session, PeerIdentity(
            name=dialer.name,
            spiffe_id=dialer.spiffe_id,
            attributes=ticket.attributes,
            ticket_id=ticket.id,
            port=port,
        )

    def check_ticket(self, token: str, peer: PeerIdentity, now: datetime) -> Ticket:
        """A dial ticket for one more circuit of an authenticated session with `peer` (a
        resume, or a stream opened inside the session): the checks of message 3 that do
        not need the certificate again: signature and expiry, the same identity, this
        service, not older than the newest revocation epoch, and the stream's port."""
        try:
            ticket = verified_ticket(token, self.credentials.bundle, now)
        except PkiError as exc:
            raise E2EError(ErrorCode.PEER_NOT_AUTHORIZED, f"ticket rejected: {exc}") from exc
        if ticket.spiffe_id != peer.spiffe_id:
            raise E2EError(ErrorCode.PEER_IDENTITY_MISMATCH, "ticket names another identity")
        if ticket.service != self.service or ticket.action != Action.DIAL:
            raise E2EError(
                ErrorCode.PEER_NOT_AUTHORIZED,
                f"ticket is for {ticket.action} {ticket.service}, not dial {self.service}",
            )
        if ticket.epoch < self.min_epoch:
            raise E2EError(
                ErrorCode.TICKET_STALE,
                f"dial ticket from epoch {ticket.epoch}, before {self.min_epoch}: get a new one",
            )
        if ticket.port != peer.port:
            raise E2EError(ErrorCode.PORT_NOT_GRANTED, "ticket grants another port")
        if self.ports is not None and ticket.port not in self.ports:
            raise E2EError(ErrorCode.PORT_NOT_GRANTED, "this host does not serve that port")
        return ticket

    def _check_dialer(
        self, payload: bytes, now: datetime, expected_dialer: str | None
    ) -> tuple[PeerIdentity, Ticket, int | None]:
        dialer, ticket, proof = _verify_peer(
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
        if ticket.epoch < self.min_epoch:
            raise E2EError(
                ErrorCode.TICKET_STALE,
                f"dial ticket from epoch {ticket.epoch}, before {self.min_epoch}: get a new one",
            )
        self._check_binding(proof, ticket)
        return dialer, ticket, self._check_port(proof, ticket)

    def _check_binding(self, proof: ControlPayload, ticket: Ticket) -> None:
        """A ticket bound to a certificate must be proven with that certificate."""
        bound_to = ticket_key_binding(proof.fields["ticket"])
        if not bound_to:
            if self.require_bound:
                raise E2EError(
                    ErrorCode.TICKET_UNBOUND,
                    "dial ticket is not bound to a certificate; this network binds tickets",
                )
            return
        if certificate_key_fingerprint(proof.fields["cert"].encode()) not in bound_to:
            raise E2EError(
                ErrorCode.TICKET_UNBOUND,
                "dial ticket is bound to another certificate than the one proven",
            )

    def _check_port(self, proof: ControlPayload, ticket: Ticket) -> int | None:
        """The stream's port: the one asked for, granted by the ticket, served by us."""
        asked = proof.fields.get("port")
        if asked is not None:
            if not isinstance(asked, int) or isinstance(asked, bool) or not 0 < asked < 65536:
                raise E2EError(ErrorCode.HANDSHAKE_FAILED, "requested port is not a port number")
            if ticket.port != asked:
                granted = "no port" if ticket.port is None else f"port {ticket.port}"
                raise E2EError(
                    ErrorCode.PORT_NOT_GRANTED,
                    f"asked for port {asked}; the ticket grants {granted}",
                )
        port = ticket.port
        if self.ports is not None and port not in self.ports:
            served = ",".join(str(p) for p in sorted(self.ports))
            raise E2EError(
                ErrorCode.PORT_NOT_GRANTED,
                f"this host serves port {served}; the ticket grants "
                + ("no port" if port is None else f"port {port}"),
            )
        return port


def certificate_key_fingerprint(cert_pem: bytes) -> str:
    """SHA-256 hex of the SubjectPublicKeyInfo of the leaf in `cert_pem`: what `cnf` lists."""
    key = load_chain(cert_pem)[0].public_key()
    return hashlib.sha256(
        key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).hexdigest()


def ticket_key_binding(token: str) -> tuple[str, ...]:
    """The certificate keys a (verified) ticket may be used with (claim `cnf`); () if unbound."""
    try:
        claims = decode_token(token, TICKET_PREFIX).claims
    except TokenFormatError:
        return ()
    keys = claims.get("cnf")
    if not isinstance(keys, list):
        return ()
    return tuple(k for k in keys if isinstance(k, str))


def ticket_epoch(token: str) -> int:
    """The epoch claim of a ticket this endpoint was given (0 if it has none or is unreadable)."""
    try:
        epoch = decode_token(token, TICKET_PREFIX).claims.get("ep", 0)
    except TokenFormatError:
        return 0
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0


def _prologue(service: str) -> bytes:
    return PROLOGUE + service.encode()


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
) -> tuple[PeerIdentity, Ticket, ControlPayload]:
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
    identity = PeerIdentity(
        name=peer.spiffe_id.name or str(peer.spiffe_id), spiffe_id=str(peer.spiffe_id)
    )
    return identity, ticket, proof
