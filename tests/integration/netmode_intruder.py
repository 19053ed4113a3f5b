"""An identity that policy keeps apart tries anyway: it knows a device's public key (keys are
not secret; it just was never given this one) and sends it a WireGuard handshake and a ping.

Run inside a test namespace with the intruder's own identity file. Prints JSON: how many
datagrams it sent, how many came back, and what its machine made of them. The target must
answer nothing: it has no peer with the intruder's key.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import struct
import time

from umbranet.clock import system_clock
from umbranet.pki import IdentityFile
from umbranet.proto.wireguard import Device


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--identity", required=True)
    parser.add_argument("--peer-key", required=True, help="the target's public key, base64")
    parser.add_argument("--endpoint", required=True, help="host:port of the target")
    parser.add_argument("--src", required=True, help="overlay source address to claim")
    parser.add_argument("--dst", required=True, help="the target's overlay address")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    device = Device.for_identity(IdentityFile.load(args.identity))
    host, port = args.endpoint.rsplit(":", 1)
    target = base64.b64decode(args.peer_key)
    device.add_peer(target, endpoint=(host, int(port)), allowed_ips=[f"{args.dst}/32"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.2)
    sent = received = 0
    device.send_packet(_echo(args.src, args.dst), system_clock.now())
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        while (out := device.poll_transmit()) is not None:
            sock.sendto(out[0], out[1])
            sent += 1
        try:
            data, addr = sock.recvfrom(65535)
        except TimeoutError:
            device.handle_timeout(system_clock.now())
            continue
        received += 1
        device.handle_datagram(data, (addr[0], addr[1]), system_clock.now())
    events = []
    while (event := device.poll_event()) is not None:
        events.append(type(event).__name__)
    print(json.dumps({"sent": sent, "received": received, "events": events}))


def _echo(src: str, dst: str) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"intruder"
    checksum = _checksum(icmp)
    icmp = icmp[:2] + struct.pack("!H", checksum) + icmp[4:]
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + icmp


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


if __name__ == "__main__":
    main()
