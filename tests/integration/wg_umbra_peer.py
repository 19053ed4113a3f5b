"""An Umbranet WireGuard peer for the interop test: a TUN, a UDP socket and the machine.

Run inside a test namespace: creates the TUN, gives it `--address`, runs the driver for at
most `--seconds` (or until SIGTERM) and prints the device's statistics as JSON on exit.
Prints READY once the TUN is up and the socket is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import socket
import subprocess

from umbranet.aio.tun import Tun
from umbranet.aio.wg_driver import WireGuardDriver
from umbranet.proto.wireguard import Device, DeviceConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--private-key", required=True, help="base64, 32 bytes")
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--peer", required=True, help="the peer's public key, base64")
    parser.add_argument("--endpoint", default=None, help="host:port of the peer")
    parser.add_argument("--allowed", action="append", default=[])
    parser.add_argument("--tun", default="wgu0")
    parser.add_argument("--address", required=True, help="CIDR for the TUN")
    parser.add_argument("--address6", default=None, help="IPv6 CIDR for the TUN")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--always-under-load", action="store_true", help="cookie path test")
    args = parser.parse_args()

    config = DeviceConfig(handshake_load_threshold=0) if args.always_under_load else None
    device = Device(base64.b64decode(args.private_key), config=config)
    endpoint = None
    if args.endpoint:
        host, port = args.endpoint.rsplit(":", 1)
        endpoint = (host, int(port))
    device.add_peer(base64.b64decode(args.peer), endpoint=endpoint, allowed_ips=args.allowed)
    host, port = args.listen.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, int(port)))
    with Tun.open(args.tun) as tun:
        subprocess.run(["ip", "addr", "add", args.address, "dev", tun.name], check=True)
        if args.address6:
            subprocess.run(
                ["ip", "-6", "addr", "add", args.address6, "dev", tun.name, "nodad"], check=True
            )
        subprocess.run(["ip", "link", "set", tun.name, "mtu", "1420", "up"], check=True)
        asyncio.run(serve(device, sock, tun, args.seconds))
    sock.close()


async def serve(device: Device, sock: socket.socket, tun: Tun, seconds: float) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with WireGuardDriver(device, sock, tun, on_event=print) as driver:
        print("READY", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        print("STATS " + json.dumps(driver.statistics(), default=str), flush=True)


if __name__ == "__main__":
    main()
