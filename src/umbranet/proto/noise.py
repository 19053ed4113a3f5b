"""The Noise Protocol Framework (revision 34) as pure code: handshakes and transport ciphers.

Why it exists: the end-to-end session (`umbranet.proto.e2e`) runs
Noise_XX_25519_AESGCM_SHA256 between two endpoints across untrusted routers, and we want that
handshake small, sans-IO and checked against the published test vectors rather than trusted
from a wrapper. Only `cryptography` (X25519, AES-GCM, ChaCha20-Poly1305), `hashlib` and `hmac`
are used; nothing here reads the clock or touches a socket.

Supported: DH 25519; ciphers AESGCM and ChaChaPoly; hashes SHA256, SHA512, BLAKE2s and BLAKE2b;
every fundamental, one-way and deferred pattern of the specification, with any psk modifiers
(e.g. `Noise_XXpsk3_...`, `Noise_NXpsk0+psk1+psk2_...`). Not supported: 448, fallback, hfs.

Lengths: handshake messages obey Noise's 65535-byte limit. `CipherState` does not enforce it,
on purpose: umbranet's DATA frames seal up to 64 KiB plus the tag (`wire.MAX_DATA_PAYLOAD`),
the limit is about framing rather than cipher safety, and the transport's framing bounds the
messages it hands in.

Errors: everything this module raises on purpose is a `NoiseError` (codes in its docstring).
A failed `read_message` ends the handshake; a failed `decrypt_with_ad` leaves the nonce where it
was, but the stream must still be torn down by the caller.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from umbranet.proto.noise_patterns import DH_LEN, PATTERNS, TAG_LEN, Messages, overheads

__all__ = [
    "MAX_MESSAGE_LEN",
    "CipherState",
    "HandshakeState",
    "NoiseError",
    "generate_keypair",
    "x25519_public",
]

MAX_MESSAGE_LEN = 65535
_MAX_NONCE = 2**64 - 1  # reserved by the spec: n never reaches it
# AEAD class, shift, byte order: the 96-bit nonce is 32 zero bits then the 64-bit counter,
# big-endian for AES-GCM and little-endian for ChaCha20-Poly1305, i.e. one int.to_bytes call.
_CIPHERS: dict[str, tuple[type[AESGCM] | type[ChaCha20Poly1305], int, Any]] = {
    "AESGCM": (AESGCM, 0, "big"),
    "ChaChaPoly": (ChaCha20Poly1305, 32, "little"),
}
# hashlib constructor, name for hmac.digest (OpenSSL's one-shot HMAC), HASHLEN.
_HashSpec = tuple[Callable[..., Any], str, int]
_HASHES: dict[str, _HashSpec] = {
    "SHA256": (hashlib.sha256, "sha256", 32),
    "SHA512": (hashlib.sha512, "sha512", 64),
    "BLAKE2s": (hashlib.blake2s, "blake2s", 32),
    "BLAKE2b": (hashlib.blake2b, "blake2b", 64),
}

_Buffer = bytes | bytearray | memoryview


class NoiseError(Exception):
    """A Noise operation failed. `code` is stable for machines, `reason` is for people.

    Codes (and whose fault):
      unsupported     local: the protocol name is not one this module implements.
      bad_key         local: a key has the wrong length or the pattern needs one not given;
                      remote: a peer's public key is a low-order point (DH result all zero).
      wrong_state     local: a call out of turn (write when it is the peer's turn, split
                      before the end, a second split, use after a failure).
      bad_message     remote: a handshake message too short for its tokens or over 65535
                      bytes; local: a payload that would make a message over 65535 bytes.
      decrypt_failed  remote: authentication failed (tampered, replayed, reordered, wrong key).
      nonce_exhausted local: 2**64-1 messages were sent or received with one key.
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def x25519_public(private: bytes) -> bytes:
    """The 32-byte X25519 public key of a 32-byte private key."""
    return _load_private(private)[1]


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair `(private, public)`, 32 bytes each, from the OS's CSPRNG."""
    key = X25519PrivateKey.generate()
    return key.private_bytes_raw(), key.public_key().public_bytes_raw()


class CipherState:
    """One direction's AEAD key and nonce counter (Noise section 5.1).

    The AEAD object is built once per key and its bound methods kept, so a call costs the
    nonce's `int.to_bytes`, the AEAD and a counter bump. Inputs may be memoryviews; they are
    handed to `cryptography` without a copy. Without a key (only inside a handshake) the
    plaintext passes through, as the spec requires.
    """

    __slots__ = ("_aead_class", "_dec", "_dec_into", "_enc", "_enc_into", "_order", "_shift",
                 "_usable", "cipher_name", "n")  # fmt: skip

    def __init__(self, cipher_name: str = "AESGCM", key: bytes | None = None) -> None:
        try:
            aead_class, self._shift, self._order = _CIPHERS[cipher_name]
        except KeyError:
            raise NoiseError("unsupported", f"cipher {cipher_name!r}") from None
        self._aead_class: type[AESGCM] | type[ChaCha20Poly1305] = aead_class
        self.cipher_name = cipher_name
        self._usable = True
        self.n = 0
        self._enc: Callable[[bytes, _Buffer, _Buffer], bytes] | None = None
        self._dec: Callable[[bytes, _Buffer, _Buffer], bytes] | None = None
        self._enc_into: Callable[[bytes, _Buffer, _Buffer, _Buffer], int] | None = None
        self._dec_into: Callable[[bytes, _Buffer, _Buffer, _Buffer], int] | None = None
        if key is not None:
            self.set_key(key)

    def has_key(self) -> bool:
        """Whether a key is set (otherwise encryption is the identity, per the spec)."""
        return self._enc is not None

    def encrypt_with_ad(self, ad: _Buffer, plaintext: _Buffer) -> bytes:
        """Seal `plaintext` with `ad` authenticated, using and then advancing the nonce."""
        enc = self._enc
        if enc is None:
            return self._no_key(plaintext)
        n = self.n
        if n >= _MAX_NONCE:
            raise NoiseError("nonce_exhausted", "no nonce left for this key")
        out = enc((n << self._shift).to_bytes(12, self._order), plaintext, ad)
        self.n = n + 1
        return out

    def decrypt_with_ad(self, ad: _Buffer, ciphertext: _Buffer) -> bytes:
        """Open `ciphertext`; on failure raise `decrypt_failed` and leave the nonce unchanged."""
        dec = self._dec
        if dec is None:
            return self._no_key(ciphertext)
        n = self.n
        if n >= _MAX_NONCE:
            raise NoiseError("nonce_exhausted", "no nonce left for this key")
        try:
            out = dec((n << self._shift).to_bytes(12, self._order), ciphertext, ad)
        except InvalidTag:
            raise NoiseError("decrypt_failed", "message failed authentication") from None
        self.n = n + 1
        return out

    def encrypt_into(self, ad: _Buffer, plaintext: _Buffer, out: bytearray | memoryview) -> int:
        """Like `encrypt_with_ad`, writing into `out` (exactly len(plaintext) + 16 bytes)."""
        enc_into = self._enc_into
        if enc_into is None:
            raise NoiseError("wrong_state", "encrypt_into needs a key")
        n = self.n
        if n >= _MAX_NONCE:
            raise NoiseError("nonce_exhausted", "no nonce left for this key")
        written = enc_into((n << self._shift).to_bytes(12, self._order), plaintext, ad, out)
        self.n = n + 1
        return written

    def decrypt_into(self, ad: _Buffer, ciphertext: _Buffer, out: bytearray | memoryview) -> int:
        """Like `decrypt_with_ad`, writing into `out` (exactly len(ciphertext) - 16 bytes)."""
        dec_into = self._dec_into
        if dec_into is None:
            raise NoiseError("wrong_state", "decrypt_into needs a key")
        n = self.n
        if n >= _MAX_NONCE:
            raise NoiseError("nonce_exhausted", "no nonce left for this key")
        try:
            written = dec_into((n << self._shift).to_bytes(12, self._order), ciphertext, ad, out)
        except InvalidTag:
            raise NoiseError("decrypt_failed", "message failed authentication") from None
        self.n = n + 1
        return written

    def set_key(self, key: bytes) -> None:
        """Install a 32-byte key and reset the nonce to zero (the spec's InitializeKey)."""
        if len(key) != 32:
            raise NoiseError("bad_key", f"cipher key must be 32 bytes, not {len(key)}")
        aead = self._aead_class(key)
        self._enc, self._dec = aead.encrypt, aead.decrypt
        self._enc_into, self._dec_into = aead.encrypt_into, aead.decrypt_into
        self.n = 0

    def rekey(self) -> None:
        """Replace the key by one derived from it (the spec's Rekey); the nonce is kept."""
        if self._enc is None:
            raise NoiseError("wrong_state", "rekey needs a key")
        n = self.n
        nonce = (_MAX_NONCE << self._shift).to_bytes(12, self._order)
        self.set_key(self._enc(nonce, bytes(32), b"")[:32])
        self.n = n

    def _no_key(self, data: _Buffer) -> bytes:
        if not self._usable:
            raise NoiseError("wrong_state", "one-way pattern: this direction carries nothing")
        return bytes(data)


class HandshakeState:
    """One side of a Noise handshake, driven by `write_message` and `read_message` in turn.

    `s` is this side's static X25519 private key, `rs` the peer's static public key when the
    pattern has it known in advance (giving `rs` for a pattern that sends it is refused, so no
    caller believes it pinned a key that is never checked), `psks` the pre-shared keys in the
    order their tokens occur, and `e` a fixed ephemeral private key for test vectors only.

    After the last message `complete` is true and `split()` returns this side's
    `(send, receive)` ciphers. A failed read, or a failed DH while writing, ends the handshake:
    every later call raises `wrong_state`.
    """

    def __init__(
        self,
        protocol_name: str,
        initiator: bool,
        prologue: bytes = b"",
        *,
        s: bytes | None = None,
        rs: bytes | None = None,
        e: bytes | None = None,
        psks: Sequence[bytes] = (),
    ) -> None:
        pre_i, pre_r, messages, cipher_name, hash_spec = _parse_protocol(protocol_name)
        self.protocol_name = protocol_name
        self.initiator = initiator
        self._messages = messages
        self._one_way = len(messages) == 1
        self._psk_mode = any("psk" in m for m in messages)
        self._s = _load_static(s) if s is not None else None
        self.local_static_public: bytes | None = self._s[1] if self._s is not None else None
        self._fixed_e = _load_private(e) if e is not None else None
        self._e: tuple[X25519PrivateKey, bytes] | None = None
        self._re: bytes | None = None
        self._rs: bytes | None = None
        self._index = 0
        self._state = _Phase.HANDSHAKE
        self._psks = [bytes(k) for k in psks]  # consumed in order by the psk tokens

        n_psk = sum(m.count("psk") for m in messages)
        if len(self._psks) != n_psk or any(len(k) != 32 for k in self._psks):
            raise NoiseError("bad_key", f"pattern needs {n_psk} pre-shared keys of 32 bytes")
        local_pre, remote_pre = (pre_i, pre_r) if initiator else (pre_r, pre_i)
        mine = range(0 if initiator else 1, len(messages), 2)
        if self._s is None and ("s" in local_pre or any("s" in messages[i] for i in mine)):
            raise NoiseError("bad_key", "pattern needs a local static key")
        if "s" in remote_pre:
            if rs is None or len(rs) != DH_LEN:
                raise NoiseError("bad_key", "pattern needs the remote static public key")
            self._rs = bytes(rs)
        elif rs is not None:
            raise NoiseError("bad_key", "pattern learns the remote static key itself")

        self._sym = _SymmetricState(protocol_name, cipher_name, hash_spec)
        self._sym.mix_hash(prologue)
        for owner_is_initiator, pre in ((True, pre_i), (False, pre_r)):
            if "s" in pre:
                local = owner_is_initiator == initiator
                key = self.local_static_public if local else self._rs
                assert key is not None
                self._sym.mix_hash(key)
        self._overheads = overheads(messages, self._psk_mode)

    @property
    def complete(self) -> bool:
        """Whether every handshake message has been written or read."""
        return self._state in (_Phase.COMPLETE, _Phase.SPLIT)

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once known (in advance or from a message)."""
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        """The transcript hash h; after completion both sides hold the same value."""
        return self._sym.h

    def export_secret(self, label: bytes) -> bytes:
        """A secret both sides derive from the chaining key once the handshake completed
        (before `split`, which drops it): keys for things beyond the two transport ciphers,
        such as resuming the session on another circuit. Distinct labels give unrelated
        secrets; none of them reveals the transport keys."""
        if self._state != _Phase.COMPLETE:
            raise NoiseError("wrong_state", f"export in state {self._state}")
        return self._sym._hmac(self._sym.ck, b"export " + label)

    def write_message(self, payload: _Buffer = b"") -> bytes:
        """Produce the next handshake message, carrying `payload` (encrypted once keyed)."""
        index = self._turn(writing=True)
        if len(payload) + self._overheads[index] > MAX_MESSAGE_LEN:
            raise NoiseError("bad_message", f"message would exceed {MAX_MESSAGE_LEN} bytes")
        sym = self._sym
        out = bytearray()
        try:
            for token in self._messages[index]:
                if token == "e":
                    self._e = self._fixed_e or _new_ephemeral()
                    out += self._e[1]
                    sym.mix_hash(self._e[1])
                    if self._psk_mode:
                        sym.mix_key(self._e[1])
                elif token == "s":
                    assert self._s is not None
                    out += sym.encrypt_and_hash(self._s[1])
                elif token == "psk":
                    sym.mix_key_and_hash(self._psks.pop(0))
                else:
                    sym.mix_key(self._dh(token))
            out += sym.encrypt_and_hash(payload)
        except NoiseError:
            self._state = _Phase.FAILED
            raise
        self._advance()
        return bytes(out)

    def read_message(self, message: _Buffer) -> bytes:
        """Consume the peer's next handshake message and return its payload."""
        index = self._turn(writing=False)
        try:
            if len(message) > MAX_MESSAGE_LEN:
                raise NoiseError("bad_message", f"message exceeds {MAX_MESSAGE_LEN} bytes")
            if len(message) < self._overheads[index]:
                raise NoiseError("bad_message", "message too short for its tokens")
            sym = self._sym
            view = memoryview(message)
            pos = 0
            for token in self._messages[index]:
                if token == "e":
                    self._re = bytes(view[pos : pos + DH_LEN])
                    pos += DH_LEN
                    sym.mix_hash(self._re)
                    if self._psk_mode:
                        sym.mix_key(self._re)
                elif token == "s":
                    end = pos + DH_LEN + (TAG_LEN if sym.cipher.has_key() else 0)
                    self._rs = sym.decrypt_and_hash(view[pos:end])
                    pos = end
                elif token == "psk":
                    sym.mix_key_and_hash(self._psks.pop(0))
                else:
                    sym.mix_key(self._dh(token))
            payload = sym.decrypt_and_hash(view[pos:])
        except NoiseError:
            self._state = _Phase.FAILED
            raise
        self._advance()
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """This side's `(send, receive)` transport ciphers, already oriented.

        The initiator sends with the spec's first cipher and receives with the second; the
        responder the other way round. In a one-way pattern the unused direction (the
        initiator's receive, the responder's send) refuses every call with `wrong_state`.
        Allowed once: two copies of one key would reuse nonces. The local keys are dropped.
        """
        if self._state != _Phase.COMPLETE:
            raise NoiseError("wrong_state", f"split in state {self._state}")
        c1, c2 = self._sym.split()
        if self._one_way:
            c2 = CipherState(c2.cipher_name)
            c2._usable = False
        self._state = _Phase.SPLIT
        self._s = self._e = self._fixed_e = None
        self._psks = []
        return (c1, c2) if self.initiator else (c2, c1)

    def _turn(self, writing: bool) -> int:
        if self._state != _Phase.HANDSHAKE:
            raise NoiseError("wrong_state", f"handshake is {self._state}")
        index = self._index
        if ((index % 2 == 0) == self.initiator) != writing:
            verb = "write" if writing else "read"
            raise NoiseError("wrong_state", f"not this side's turn to {verb} message {index}")
        return index

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(self._messages):
            self._state = _Phase.COMPLETE

    def _dh(self, token: str) -> bytes:
        # The first letter names the initiator's key, the second the responder's.
        ours, theirs = (token[0], token[1]) if self.initiator else (token[1], token[0])
        local = self._e if ours == "e" else self._s
        remote = self._re if theirs == "e" else self._rs
        if local is None or remote is None:
            raise NoiseError("bad_key", f"no key for token {token}")
        try:
            return local[0].exchange(X25519PublicKey.from_public_bytes(remote))
        except ValueError:
            raise NoiseError("bad_key", "peer public key is a low-order point") from None


class _Phase(StrEnum):
    """Where a handshake is: HANDSHAKE -> COMPLETE -> SPLIT, or HANDSHAKE -> FAILED (final)."""

    HANDSHAKE = "in progress"
    COMPLETE = "complete"
    SPLIT = "split"
    FAILED = "failed"


class _SymmetricState:
    """The spec's SymmetricState: chaining key ck, transcript hash h, and a CipherState."""

    __slots__ = ("_block", "_cipher_name", "_hash", "_hmac_name", "cipher", "ck", "h")

    def __init__(self, protocol_name: str, cipher_name: str, hash_spec: _HashSpec) -> None:
        self._hash, self._hmac_name, hash_len = hash_spec
        self._block: int = self._hash().block_size
        self._cipher_name = cipher_name
        name = protocol_name.encode("ascii")
        h = name.ljust(hash_len, b"\0") if len(name) <= hash_len else self._hash(name).digest()
        self.ck: bytes = h
        self.h: bytes = h
        self.cipher = CipherState(cipher_name)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k, _ = self._hkdf(ikm, 2)
        self.cipher.set_key(temp_k[:32])

    def mix_hash(self, data: _Buffer) -> None:
        hasher = self._hash(self.h)
        hasher.update(data)
        self.h = hasher.digest()

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = self._hkdf(ikm, 3)
        self.mix_hash(temp_h)
        self.cipher.set_key(temp_k[:32])

    def encrypt_and_hash(self, plaintext: _Buffer) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: _Buffer) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2, _ = self._hkdf(b"", 2)
        self.ck = b""
        return CipherState(self._cipher_name, k1[:32]), CipherState(self._cipher_name, k2[:32])

    def _hkdf(self, ikm: bytes, outputs: int) -> tuple[bytes, bytes, bytes]:
        mac = self._hmac
        temp = mac(self.ck, ikm)
        out1 = mac(temp, b"\x01")
        out2 = mac(temp, out1 + b"\x02")
        if outputs == 2:
            return out1, out2, b""
        return out1, out2, mac(temp, out2 + b"\x03")

    def _hmac(self, key: bytes, data: bytes) -> bytes:
        """HMAC (RFC 2104) from two hash calls: ~2x faster than `hmac.digest`, whose
        OpenSSL one-shot fetches the algorithm on every call (12 HMACs per handshake side).
        Keys here are ck or HKDF's temp key, always HASHLEN, so never longer than a block."""
        block = self._block
        if len(key) > block:
            return hmac.digest(key, data, self._hmac_name)
        padded = key.ljust(block, b"\0")
        inner = self._hash(padded.translate(_IPAD) + data).digest()
        result: bytes = self._hash(padded.translate(_OPAD) + inner).digest()
        return result


_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


_PSK = r"psk(?:0|[1-9][0-9]*)"
_NAME_RE = re.compile(rf"([NKXI1]+)({_PSK}(?:\+{_PSK})*)?")


@functools.lru_cache(maxsize=64)
def _parse_protocol(
    name: str,
) -> tuple[tuple[str, ...], tuple[str, ...], Messages, str, _HashSpec]:
    """Split `Noise_<pattern><modifiers>_<dh>_<cipher>_<hash>` and apply psk modifiers.

    Cached: an endpoint parses the same name for every circuit it opens or accepts, and the
    result is immutable (errors are raised, never cached).
    """
    parts = name.split("_")
    match = _NAME_RE.fullmatch(parts[1]) if len(parts) == 5 and parts[0] == "Noise" else None
    if match is None or match.group(1) not in PATTERNS:
        raise NoiseError("unsupported", f"protocol {name!r}")
    if parts[2] != "25519" or parts[3] not in _CIPHERS or parts[4] not in _HASHES:
        raise NoiseError("unsupported", f"protocol {name!r}: DH, cipher or hash not supported")
    pre_i, pre_r, base = PATTERNS[match.group(1)]
    messages = [list(m) for m in base]
    modifiers = match.group(2).split("+") if match.group(2) else []
    if len(set(modifiers)) != len(modifiers):
        raise NoiseError("unsupported", f"protocol {name!r}: repeated modifier")
    for modifier in modifiers:
        n = int(modifier[3:])
        if n == 0:
            messages[0].insert(0, "psk")
        elif n <= len(messages):
            messages[n - 1].append("psk")
        else:
            raise NoiseError("unsupported", f"protocol {name!r}: {modifier} past the last message")
    return pre_i, pre_r, tuple(tuple(m) for m in messages), parts[3], _HASHES[parts[4]]


def _new_ephemeral() -> tuple[X25519PrivateKey, bytes]:
    key = X25519PrivateKey.generate()
    return key, key.public_key().public_bytes_raw()


def _load_static(private: bytes) -> tuple[X25519PrivateKey, bytes]:
    """`_load_private`, remembered: deriving the public key costs ~20 us, and an endpoint
    uses one static key for every handshake (ephemeral keys never come through here)."""
    if not isinstance(private, bytes) or private not in _STATIC_KEYS:
        loaded = _load_private(private)
        if len(_STATIC_KEYS) >= 16:
            _STATIC_KEYS.clear()
        _STATIC_KEYS[bytes(private)] = loaded
        return loaded
    return _STATIC_KEYS[private]


_STATIC_KEYS: dict[bytes, tuple[X25519PrivateKey, bytes]] = {}


def _load_private(private: bytes) -> tuple[X25519PrivateKey, bytes]:
    if not isinstance(private, bytes | bytearray) or len(private) != DH_LEN:
        raise NoiseError("bad_key", "an X25519 private key is 32 bytes")
    key = X25519PrivateKey.from_private_bytes(bytes(private))
    return key, key.public_key().public_bytes_raw()
