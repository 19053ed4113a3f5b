"""Cryptokey routing at scale, in one process: configuring N peers with a /32 and a /128
each, then looking up addresses the memo has not seen (a new flow's first packet).

Runs on any tree with `AllowedIps` (`PYTHONPATH=<tree>/src`), for A/B comparisons.

Usage: `PYTHONPATH=<tree>/src python bench/wg_allowed_ips.py [--peers N] [--lookups M]`.
Prints the seconds to add every peer and the microseconds per uncached lookup (best of 3).
"""

from __future__ import annotations

import argparse
import ipaddress
import time

from umbranet.proto.wireguard.ip import AllowedIps

_V4_BASE = int(ipaddress.IPv4Address("100.64.0.0"))
_V6_BASE = int(ipaddress.IPv6Address("fd7a:115c:a1e0::"))


def one_round(peers: int, lookups: int) -> tuple[float, float]:
    table: AllowedIps[int] = AllowedIps()
    started = time.process_time()
    for peer in range(peers):
        table.add(
            [
                ipaddress.IPv4Network((_V4_BASE + peer, 32)),
                ipaddress.IPv6Network((_V6_BASE + peer, 128)),
            ],
            peer,
        )
    adding = time.process_time() - started
    step = max(1, peers // lookups)
    addresses = [(_V4_BASE + (i * step) % peers).to_bytes(4, "big") for i in range(lookups)]
    started = time.process_time()
    for address in addresses:
        table.lookup(4, int.from_bytes(address, "big"))
    looking = time.process_time() - started
    return adding, looking / lookups * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=2000)
    parser.add_argument("--lookups", type=int, default=2000)
    args = parser.parse_args()
    results = [one_round(args.peers, args.lookups) for _ in range(3)]
    print(f"peers: {args.peers}")
    print(f"add every peer s: {min(r[0] for r in results):.3f}")
    print(f"uncached lookup µs: {min(r[1] for r in results):.2f}")


if __name__ == "__main__":
    main()
