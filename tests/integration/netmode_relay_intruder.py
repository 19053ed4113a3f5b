"""An identity that policy keeps apart tries the router relay anyway.

It connects to the router as itself (a real enrolled device), and without any relay ticket
for the target sends WireGuard-looking datagrams addressed to the target's public key, then
presents a relay ticket that is not its own (a garbage token) and an oversized datagram.
Prints JSON: what it sent, what came back, and what the router told it (WG_RELAY_ERR codes).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json

from umbranet.aio.wg_relay import RelayLink
from umbranet.pki import IdentityFile


async def _run(args: argparse.Namespace) -> dict[str, object]:
    target = base64.b64decode(args.peer_key)
    got: list[bytes] = []
    link = RelayLink(IdentityFile.load(args.identity), args.router, lambda k, ds: got.extend(ds))
    await link.connect(timeout=10)
    sent = 0
    for i in range(args.count):
        sent += link.send_relayed(target, b"\x04\x00\x00\x00" + bytes([i]) * 60)
    link.allow(target, "ut1.not-a-ticket")
    sent += link.send_relayed(target, b"\x04\x00\x00\x00" + bytes(100))
    sent += link.send_relayed(bytes(32), b"\x04\x00\x00\x00" + bytes(100))  # nobody's key
    await asyncio.sleep(1.0)
    stats = link.statistics()
    link.close()
    return {"sent": sent, "received": len(got), "refused": stats["refused"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--identity", required=True)
    parser.add_argument("--router", required=True, help="host:port of the router")
    parser.add_argument("--peer-key", required=True, help="the target's public key, base64")
    parser.add_argument("--count", type=int, default=5)
    print(json.dumps(asyncio.run(_run(parser.parse_args()))))


if __name__ == "__main__":
    main()
