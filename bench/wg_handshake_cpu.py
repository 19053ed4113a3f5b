"""CPU per WireGuard handshake on each side, in one process: what a rekey, a reconnect or a
flood of initiations from a configured peer costs the machine.

Two `Device`s with each other configured; the initiator's `initiate` (building a type-1
message) and the responder's `handle_datagram` of it (verifying it and building the type-2
answer) are timed separately with `time.process_time`, the clock moved 6 s between
handshakes so no rate limit or load rule interferes. Runs on any tree with the device API
(`PYTHONPATH=<tree>/src`), for A/B comparisons.

Usage: `PYTHONPATH=<tree>/src python bench/wg_handshake_cpu.py [--handshakes N] [--rounds R]`.
Prints microseconds of CPU per message for each side (best of R rounds).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time

from umbranet.proto.wireguard import Device
from umbranet.testing.clock import FakeClock

A_ADDR, B_ADDR = ("198.18.0.1", 51820), ("198.18.0.2", 51820)


def _key(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def one_round(handshakes: int) -> tuple[float, float]:
    """(initiator µs, responder µs) per handshake over `handshakes` handshakes."""
    clock = FakeClock()
    a = Device(_key("a"), random_bytes=random.Random(1).randbytes)
    b = Device(_key("b"), random_bytes=random.Random(2).randbytes)
    a.add_peer(b.public_key, endpoint=B_ADDR, allowed_ips=["100.64.0.2/32"])
    b.add_peer(a.public_key, endpoint=A_ADDR, allowed_ips=["100.64.0.1/32"])
    initiating = responding = 0.0
    for _ in range(handshakes):
        clock.advance(6.0)
        started = time.process_time()
        a.initiate(b.public_key, clock.now())
        initiating += time.process_time() - started
        message = a.poll_transmit()
        assert message is not None, "the initiator sent no initiation"
        started = time.process_time()
        b.handle_datagram(message[0], A_ADDR, clock.now())
        responding += time.process_time() - started
        answer = b.poll_transmit()
        assert answer is not None, "the responder did not answer"
    return initiating / handshakes * 1e6, responding / handshakes * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = [one_round(args.handshakes) for _ in range(args.rounds)]
    print(f"initiation µs/handshake: {min(r[0] for r in results):.1f}")
    print(f"response µs/handshake:   {min(r[1] for r in results):.1f}")


if __name__ == "__main__":
    main()
