"""MAC1, MAC2 and cookie replies: WireGuard's defence against handshake floods (section 5.3).

Every handshake message ends with two MACs. MAC1 is keyed by the receiver's public key, so
anyone who knows whom they are talking to can make it, and a packet without it is dropped
after one BLAKE2s, before any Diffie-Hellman. MAC2 is keyed by a *cookie*: a MAC of the
sender's IP address and port under a secret the responder changes every two minutes. A
responder that is under load answers a handshake whose MAC2 is missing or stale with a cookie
reply (type 3) instead of doing the handshake; the initiator stores the cookie and its next
retry carries a valid MAC2, proving it can receive at the address it claims. The cookie
travels sealed with XChaCha20-Poly1305 under a key derived from the responder's public key,
with the MAC1 of the message it answers as associated data, so only the real initiator of
that message can open it.

`CookieChecker` is the receiving side (one per device); `CookieGenerator` the sending side
(one per peer). Both take `now` (monotonic seconds) and injected randomness.
"""

from __future__ import annotations

import hmac as _hmac
import ipaddress
from collections.abc import Callable

from umbranet.proto.wireguard.crypto import AeadError, hash_, mac, xaead_open, xaead_seal
from umbranet.proto.wireguard.messages import encode_cookie_reply, parse_cookie_reply

__all__ = [
    "COOKIE_REFRESH_TIME",
    "COOKIE_SECRET_LIFETIME",
    "LABEL_COOKIE",
    "LABEL_MAC1",
    "CookieChecker",
    "CookieGenerator",
    "address_bytes",
    "cookie_key",
    "mac1_key",
]

LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
COOKIE_SECRET_LIFETIME = 120.0  # the responder's secret changes this often
COOKIE_REFRESH_TIME = 120.0  # an initiator stops using a cookie this old
_ZERO_MAC = bytes(16)


def mac1_key(public: bytes) -> bytes:
    """The key of MAC1 for messages sent to the owner of `public`."""
    return hash_(LABEL_MAC1, public)


def cookie_key(public: bytes) -> bytes:
    """The XChaCha20-Poly1305 key of cookie replies sent by the owner of `public`."""
    return hash_(LABEL_COOKIE, public)


class CookieChecker:
    """Checks MAC1/MAC2 of handshake messages sent to us and makes cookie replies."""

    __slots__ = ("_cookie_key", "_mac1_key", "_random", "_secret", "_secret_born")

    def __init__(self, own_public: bytes, random_bytes: Callable[[int], bytes]) -> None:
        self._mac1_key = mac1_key(own_public)
        self._cookie_key = cookie_key(own_public)
        self._random = random_bytes
        self._secret = b""
        self._secret_born: float | None = None

    def check_mac1(self, message: bytes) -> bool:
        """Whether the message's MAC1 is right (the last 32 bytes are MAC1 then MAC2)."""
        expected = mac(self._mac1_key, message[:-32])
        return _hmac.compare_digest(expected, message[-32:-16])

    def check_mac2(self, message: bytes, source: bytes, now: float) -> bool:
        """Whether the message carries a MAC2 made with the cookie we would give `source`."""
        cookie = self._cookie(source, now)
        expected = mac(cookie, message[:-16])
        return _hmac.compare_digest(expected, message[-16:])

    def create_reply(self, message: bytes, receiver: int, source: bytes, now: float) -> bytes:
        """The 64-byte cookie reply to a handshake message from `source`."""
        cookie = self._cookie(source, now)
        nonce = self._random(24)
        sealed = xaead_seal(self._cookie_key, nonce, cookie, message[-32:-16])
        return encode_cookie_reply(receiver, nonce, sealed)

    def _cookie(self, source: bytes, now: float) -> bytes:
        born = self._secret_born
        if born is None or now - born >= COOKIE_SECRET_LIFETIME or now < born:
            self._secret = self._random(32)
            self._secret_born = now
        return mac(self._secret, source)


class CookieGenerator:
    """Adds MAC1/MAC2 to the handshake messages we send one peer; takes its cookie replies."""

    __slots__ = ("_cookie", "_cookie_at", "_cookie_key", "_last_mac1", "_mac1_key")

    def __init__(self, peer_public: bytes) -> None:
        self._mac1_key = mac1_key(peer_public)
        self._cookie_key = cookie_key(peer_public)
        self._cookie: bytes | None = None
        self._cookie_at = 0.0
        self._last_mac1: bytes | None = None

    def add_macs(self, body: bytes, now: float) -> bytes:
        """The whole message: `body`, its MAC1, and MAC2 if we hold a fresh cookie."""
        mac1 = mac(self._mac1_key, body)
        self._last_mac1 = mac1
        with_mac1 = body + mac1
        cookie = self._cookie
        if cookie is not None and 0 <= now - self._cookie_at < COOKIE_REFRESH_TIME:
            return with_mac1 + mac(cookie, with_mac1)
        return with_mac1 + _ZERO_MAC

    def consume_reply(self, reply: bytes, now: float) -> bool:
        """Take a cookie reply; False if it answers no message we sent or does not open."""
        if self._last_mac1 is None:
            return False
        parsed = parse_cookie_reply(reply)
        try:
            cookie = xaead_open(
                self._cookie_key, parsed.nonce, parsed.encrypted_cookie, self._last_mac1
            )
        except AeadError:
            return False
        # One reply per message: a copy replayed later must not refresh the cookie's age.
        self._last_mac1 = None
        self._cookie = cookie
        self._cookie_at = now
        return True

    def has_cookie(self, now: float) -> bool:
        """Whether the next handshake message would carry a MAC2."""
        return self._cookie is not None and 0 <= now - self._cookie_at < COOKIE_REFRESH_TIME


def address_bytes(addr: tuple[str, int]) -> bytes:
    """What the cookie is bound to: the packed IP address and the port."""
    host, port = addr[0], addr[1]
    try:
        packed = ipaddress.ip_address(host).packed
    except ValueError:
        packed = str(host).encode("utf-8", "replace")
    return packed + (port & 0xFFFF).to_bytes(2, "big")
