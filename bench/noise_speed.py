"""How fast the pure-Python Noise layer is: handshakes per second and sealed MB/s.

Why: the end-to-end session pays one Noise_XX handshake per stream and one AEAD call per DATA
frame, so these two figures bound stream setup rate and per-stream throughput before any IO.
Run: `python bench/noise_speed.py` (about 2 s; loops are bounded in time and count).
"""

from __future__ import annotations

import os
import time

from umbranet.proto.noise import CipherState, HandshakeState, generate_keypair

PROTOCOL = "Noise_XX_25519_AESGCM_SHA256"
SECONDS = 1.0
MESSAGE = 64 * 1024


def handshakes_per_second() -> float:
    """Full XX handshakes (both sides, three messages, split) in one process."""
    i_priv, _ = generate_keypair()
    r_priv, _ = generate_keypair()
    count = 0
    start = time.perf_counter()
    deadline = start + SECONDS
    while count < 100_000 and time.perf_counter() < deadline:
        init = HandshakeState(PROTOCOL, True, b"bench", s=i_priv)
        resp = HandshakeState(PROTOCOL, False, b"bench", s=r_priv)
        resp.read_message(init.write_message())
        init.read_message(resp.write_message(b"x" * 600))
        resp.read_message(init.write_message(b"x" * 600))
        init.split()
        resp.split()
        count += 1
    return count / (time.perf_counter() - start)


def seal_megabytes_per_second(cipher: str = "AESGCM") -> float:
    """`encrypt_with_ad` of 64 KiB messages through one CipherState (MB = 10**6 bytes)."""
    state = CipherState(cipher, os.urandom(32))
    data = memoryview(os.urandom(MESSAGE))
    ad = b"\x24\x00"
    count = 0
    start = time.perf_counter()
    deadline = start + SECONDS / 2
    while count < 1_000_000 and time.perf_counter() < deadline:
        state.encrypt_with_ad(ad, data)
        count += 1
    return count * MESSAGE / (time.perf_counter() - start) / 1e6


def main() -> None:
    print(f"{PROTOCOL}: {handshakes_per_second():,.0f} handshakes/s")
    for cipher in ("AESGCM", "ChaChaPoly"):
        rate = seal_megabytes_per_second(cipher)
        print(f"{cipher} encrypt_with_ad, 64 KiB messages: {rate:,.0f} MB/s")


if __name__ == "__main__":
    main()
