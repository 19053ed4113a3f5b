"""The Noise implementation against the published cacophony and snow test vectors.

Why: a handshake that agrees with itself can still be wrong; agreeing byte for byte with two
independent implementations across every pattern, cipher and hash is what makes it Noise.
Each vector is run from both sides: the sender's ciphertext must equal the vector's, and the
receiver must recover the payload; after the handshake the split ciphers carry the rest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from umbranet.proto.noise import HandshakeState, NoiseError

DATA = Path(__file__).resolve().parent.parent / "data" / "noise"
FILES = ("cacophony", "snow")
# What each file holds for curve 25519 (448 is out of scope): fixes the count, so a parsing
# regression that quietly drops vectors fails here instead of shrinking the suite.
EXPECTED_SUPPORTED = {"cacophony": 472, "snow": 408}


def _load(name: str) -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads((DATA / f"{name}.txt").read_text())["vectors"]
    return vectors


def _supported(vector: dict[str, Any]) -> bool:
    return vector["protocol_name"].split("_")[2] == "25519"


ALL = {name: _load(name) for name in FILES}
SUPPORTED = [(f, v) for f in FILES for v in ALL[f] if _supported(v)]
UNSUPPORTED = [v for f in FILES for v in ALL[f] if not _supported(v)]


def _opt(vector: dict[str, Any], key: str) -> bytes | None:
    value = vector.get(key)
    return bytes.fromhex(value) if value is not None else None


def _side(vector: dict[str, Any], prefix: str, initiator: bool) -> HandshakeState:
    return HandshakeState(
        vector["protocol_name"],
        initiator,
        bytes.fromhex(vector[f"{prefix}_prologue"]),
        s=_opt(vector, f"{prefix}_static"),
        rs=_opt(vector, f"{prefix}_remote_static"),
        e=_opt(vector, f"{prefix}_ephemeral"),
        psks=[bytes.fromhex(k) for k in vector.get(f"{prefix}_psks", [])],
    )


def test_vector_counts() -> None:
    counts = {f: sum(1 for g, _ in SUPPORTED if g == f) for f in FILES}
    assert counts == EXPECTED_SUPPORTED
    assert len(SUPPORTED) == 880
    names = {v["protocol_name"] for _, v in SUPPORTED}
    assert "Noise_XX_25519_AESGCM_SHA256" in names
    assert "Noise_IK_25519_ChaChaPoly_BLAKE2s" in names


@pytest.mark.parametrize(
    ("source", "vector"),
    SUPPORTED,
    ids=[f"{f}-{v['protocol_name']}" for f, v in SUPPORTED],
)
def test_vector(source: str, vector: dict[str, Any]) -> None:
    init = _side(vector, "init", True)
    resp = _side(vector, "resp", False)
    messages = vector["messages"]
    i = 0
    while not (init.complete and resp.complete):
        sender, receiver = (init, resp) if i % 2 == 0 else (resp, init)
        payload = bytes.fromhex(messages[i]["payload"])
        ciphertext = sender.write_message(payload)
        assert ciphertext.hex() == messages[i]["ciphertext"], f"{source} message {i}"
        assert receiver.read_message(ciphertext) == payload
        i += 1
    assert init.handshake_hash == resp.handshake_hash
    if "handshake_hash" in vector:
        assert init.handshake_hash.hex() == vector["handshake_hash"]
    assert init.remote_static == resp.local_static_public
    assert resp.remote_static == init.local_static_public

    init_send, init_recv = init.split()
    resp_send, resp_recv = resp.split()
    one_way = len(vector["protocol_name"].split("_")[1].split("psk")[0]) == 1
    for j, message in enumerate(messages[i:], start=i):
        payload = bytes.fromhex(message["payload"])
        from_initiator = one_way or j % 2 == 0
        send, recv = (init_send, resp_recv) if from_initiator else (resp_send, init_recv)
        ciphertext = send.encrypt_with_ad(b"", payload)
        assert ciphertext.hex() == message["ciphertext"], f"{source} transport {j}"
        assert recv.decrypt_with_ad(b"", ciphertext) == payload


def test_unsupported_protocols_are_refused() -> None:
    assert len(UNSUPPORTED) == 944 - 472
    for vector in UNSUPPORTED:
        with pytest.raises(NoiseError) as info:
            _side(vector, "init", True)
        assert info.value.code == "unsupported"
