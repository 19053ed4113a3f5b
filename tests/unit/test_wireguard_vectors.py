"""Known answers for WireGuard's primitives and handshake.

Published vectors: BLAKE2s (RFC 7693 appendix B and the BLAKE2 keyed KAT), HChaCha20 and
XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha-03, 2.2.1 and A.3.1), HMAC (RFC 2104's
construction, written out independently here). The handshake is checked two ways: against
`umbranet.proto.noise` (a separate, generic Noise implementation verified by the published
Noise vectors) running Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s with WireGuard's prologue, and
against a golden initiation recorded from this implementation with fixed keys and time (so
any change to the bytes on the wire is seen). The interop test against wireguard-go is the
final word.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from umbranet.proto.noise import HandshakeState
from umbranet.proto.wireguard.cookie import CookieGenerator
from umbranet.proto.wireguard.crypto import (
    AeadError,
    aead_open,
    aead_seal,
    hash_,
    hchacha20,
    hmac,
    kdf1,
    kdf2,
    kdf3,
    mac,
    public_key,
    tai64n,
    xaead_open,
    xaead_seal,
)
from umbranet.proto.wireguard.handshake import (
    CONSTRUCTION,
    IDENTIFIER,
    StaticKey,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from umbranet.proto.wireguard.messages import (
    INITIATION_LEN,
    RESPONSE_LEN,
    parse_initiation,
    parse_response,
)

SEQ32 = bytes(range(32))


def test_blake2s_matches_rfc_7693_appendix_b() -> None:
    assert hash_(b"abc").hex() == (
        "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    )
    assert hash_(b"a", b"bc") == hash_(b"abc")  # HASH of parts is HASH of the concatenation


def test_keyed_blake2s_matches_the_blake2_kat() -> None:
    keyed = hashlib.blake2s(b"", key=SEQ32).hexdigest()
    assert keyed == "48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49"
    # MAC is keyed BLAKE2s with a 16-byte digest: a different parameter block, not a prefix.
    assert len(mac(SEQ32, b"")) == 16
    assert mac(SEQ32, b"") != bytes.fromhex(keyed)[:16]


def _rfc2104_hmac_blake2s(key: bytes, data: bytes) -> bytes:
    block = 64
    if len(key) > block:
        key = hashlib.blake2s(key).digest()
    key = key.ljust(block, b"\0")
    inner = hashlib.blake2s(bytes(k ^ 0x36 for k in key) + data).digest()
    return hashlib.blake2s(bytes(k ^ 0x5C for k in key) + inner).digest()


@pytest.mark.parametrize("key", [b"", b"k", SEQ32, bytes(64), bytes(range(100))])
def test_hmac_is_rfc_2104_over_blake2s(key: bytes) -> None:
    for data in (b"", b"abc", bytes(200)):
        assert hmac(key, data) == _rfc2104_hmac_blake2s(key, data)


def test_kdf_outputs_are_hkdf_expand_steps() -> None:
    t0 = hmac(SEQ32, b"input")
    t1 = hmac(t0, b"\x01")
    t2 = hmac(t0, t1 + b"\x02")
    t3 = hmac(t0, t2 + b"\x03")
    assert kdf1(SEQ32, b"input") == t1
    assert kdf2(SEQ32, b"input") == (t1, t2)
    assert kdf3(SEQ32, b"input") == (t1, t2, t3)


def test_hchacha20_matches_the_xchacha_draft() -> None:
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert hchacha20(SEQ32, nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    )


XCHACHA_KEY = bytes(range(0x80, 0xA0))
XCHACHA_NONCE = bytes(range(0x40, 0x58))
XCHACHA_AD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
XCHACHA_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
XCHACHA_SEALED = bytes.fromhex(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
    "c0875924c1c7987947deafd8780acf49"
)


def test_xchacha20_poly1305_matches_the_draft_aead_vector() -> None:
    sealed = xaead_seal(XCHACHA_KEY, XCHACHA_NONCE, XCHACHA_PLAINTEXT, XCHACHA_AD)
    assert sealed == XCHACHA_SEALED
    assert xaead_open(XCHACHA_KEY, XCHACHA_NONCE, sealed, XCHACHA_AD) == XCHACHA_PLAINTEXT
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(AeadError):
        xaead_open(XCHACHA_KEY, XCHACHA_NONCE, tampered, XCHACHA_AD)


def test_tai64n_labels_the_epoch_and_whitens_nanoseconds() -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert tai64n(epoch).hex() == "400000000000000a00000000"
    later = datetime(2026, 12, 4, 12, 0, 0, 999_999, tzinfo=UTC)
    stamp = tai64n(later)
    assert int.from_bytes(stamp[:8], "big") == 0x400000000000000A + int(later.timestamp())
    nanos = int.from_bytes(stamp[8:], "big")
    assert nanos % (1 << 24) == 0 and nanos <= 999_999_000
    assert tai64n(later) > tai64n(datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC))


# Fixed inputs for the handshake vectors (any 32 bytes are valid X25519 private keys).
I_STATIC = hashlib.sha256(b"initiator static").digest()
R_STATIC = hashlib.sha256(b"responder static").digest()
I_KEY, R_KEY = StaticKey(I_STATIC), StaticKey(R_STATIC)  # nothing remembered: all computed
I_EPHEMERAL = hashlib.sha256(b"initiator ephemeral").digest()
R_EPHEMERAL = hashlib.sha256(b"responder ephemeral").digest()
PSK = hashlib.sha256(b"preshared").digest()
STAMP = tai64n(datetime(2026, 12, 4, 12, 0, tzinfo=UTC))
SENDER, RESPONDER_INDEX = 0x11223344, 0x55667788


def test_the_handshake_is_noise_ikpsk2_with_wireguards_prologue() -> None:
    body, state = create_initiation(I_KEY, public_key(R_STATIC), I_EPHEMERAL, SENDER, STAMP)
    noise_i = HandshakeState(
        CONSTRUCTION.decode(), True, IDENTIFIER, s=I_STATIC, rs=public_key(R_STATIC),
        e=I_EPHEMERAL, psks=[PSK],
    )  # fmt: skip
    noise_r = HandshakeState(
        CONSTRUCTION.decode(), False, IDENTIFIER, s=R_STATIC, e=R_EPHEMERAL, psks=[PSK]
    )
    first = noise_i.write_message(STAMP)
    # WireGuard's initiation is the Noise message after the type, reserved and index fields.
    assert body[8:] == first
    assert noise_r.read_message(first) == STAMP

    consumed = consume_initiation(R_KEY, parse_initiation(body + bytes(32)))
    assert consumed.peer_public == public_key(I_STATIC)
    assert consumed.timestamp == STAMP
    response, r_keys = create_response(consumed, PSK, R_EPHEMERAL, RESPONDER_INDEX)
    second = noise_r.write_message(b"")
    assert response[12:] == second
    noise_i.read_message(second)

    i_keys = consume_response(state, I_KEY, PSK, parse_response(response + bytes(32)))
    i_send, i_recv = noise_i.split()
    # Transport keys agree with Noise's Split: a message sealed by one opens with the other.
    assert i_keys.send == r_keys.receive and i_keys.receive == r_keys.send
    probe = i_send.encrypt_with_ad(b"", b"probe")
    assert aead_open(r_keys.receive, 0, probe, b"") == b"probe"
    assert i_recv.decrypt_with_ad(b"", aead_seal(r_keys.send, 0, b"back", b"")) == b"back"


# Recorded 2026-12-04 from fixed keys, index and timestamp above (interop-checked code).
GOLDEN_INITIATION = (
    "0100000044332211e91cb54a921625d460fb12619c852bb40a21b4e55077827f"
    "d19a9bca6607cd5cd273d6512a10a6640848105b9e99296cbad5de0f331737b9"
    "4b51be805afaadc6bfebc48992d21af6b195a5e8efac2d3eb878a0b7dacf8642"
    "df5c8f6abeb0e900385bc1d25273a4f37c959facda65f796c396c8e76c0b0587"
    "8d19f5e600000000000000000000000000000000"
)


def test_initiation_bytes_are_reproducible_golden_vector() -> None:
    body, _ = create_initiation(I_KEY, public_key(R_STATIC), I_EPHEMERAL, SENDER, STAMP)
    message = CookieGenerator(public_key(R_STATIC)).add_macs(body, 0.0)
    assert len(message) == INITIATION_LEN
    assert message[:8] == bytes.fromhex("0100000044332211")  # type 1, reserved, index LE
    assert message[-16:] == bytes(16)  # no cookie yet: MAC2 is zeros
    assert message.hex() == GOLDEN_INITIATION
    again, _ = create_initiation(I_KEY, public_key(R_STATIC), I_EPHEMERAL, SENDER, STAMP)
    assert again == body


def test_response_has_the_published_size() -> None:
    body, _ = create_initiation(I_KEY, public_key(R_STATIC), I_EPHEMERAL, SENDER, STAMP)
    consumed = consume_initiation(R_KEY, parse_initiation(body + bytes(32)))
    response, _ = create_response(consumed, None, R_EPHEMERAL, RESPONDER_INDEX)
    assert len(response) + 32 == RESPONSE_LEN
    assert response[:12] == bytes.fromhex("020000008877665544332211")
