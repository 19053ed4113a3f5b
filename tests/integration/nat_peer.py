"""One process of the NAT lab (run inside a namespace by `natlab.py`).

``nat_peer.py stun HOST:PORT...``: answer STUN binding requests on each address until killed.

``nat_peer.py peer --key K --peer-key P --dir D --name N --peer-name M``: bind UDP port
51820, learn the server-reflexive address from the lab's two STUN servers over that socket,
publish host + server-reflexive candidates as ``D/N.json`` (signalling by file: the lab's
namespaces share the file system; the controller's route does the same between machines),
wait for ``D/M.json``, then probe the peer's candidates with `ProbeAgent` until a pair is
selected (and 2 s more, so the peer can finish too) or checks fail; print one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from umbranet.aio.nat import NatSocket, local_addresses, parse_hostport
from umbranet.aio.stun_server import StunServer
from umbranet.clock import system_clock
from umbranet.proto.ice import (
    Candidate,
    DirectFailed,
    PathSelected,
    ProbeAgent,
    classify_mapping,
    host_candidates,
)
from umbranet.proto.stun import BindingFailed, BindingResult
from umbranet.proto.wireguard.crypto import public_key

STUN = ("198.18.0.1:3478", "198.18.0.2:3478")


async def serve_stun(addresses: list[str]) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for address in addresses:
            host, port = parse_hostport(address)
            await stack.enter_async_context(StunServer(host, port))
        print("stun ready", flush=True)
        await asyncio.sleep(3600)


async def peer(args: argparse.Namespace) -> dict[str, object]:
    private = bytes.fromhex(args.key)
    peer_public = bytes.fromhex(args.peer_key)
    started = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", args.port))
    agent = ProbeAgent(private, public_key(private), tries=args.tries)
    results: list[BindingResult] = []
    failures: list[BindingFailed] = []
    selected: list[tuple[float, PathSelected]] = []
    failed: list[DirectFailed] = []
    stun_done = asyncio.Event()
    finished = asyncio.Event()

    def on_event(event: object) -> None:
        if isinstance(event, BindingResult):
            results.append(event)
        elif isinstance(event, BindingFailed):
            failures.append(event)
        elif isinstance(event, PathSelected):
            selected.append((time.monotonic() - started, event))
        elif isinstance(event, DirectFailed):
            failed.append(event)
            finished.set()
        if len(results) + len(failures) >= len(STUN):
            stun_done.set()

    shell = NatSocket(sock, agent=agent, on_event=on_event)
    shell.start()
    shell.stun.start_all([parse_hostport(s) for s in STUN], system_clock.now())
    shell.flush()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stun_done.wait(), 5)
    local = local_addresses()
    mapping = classify_mapping(results, local) if results else "udp-blocked"
    mine = host_candidates(local, args.port)
    for mapped in sorted({r.mapped for r in results}):
        if mapped[0] not in local:
            mine.append(Candidate("srflx", mapped))
    directory = Path(args.dir)
    tmp = directory / f".{args.name}.json"
    tmp.write_text(json.dumps({"candidates": [c.to_json() for c in mine], "nat": mapping}))
    tmp.rename(directory / f"{args.name}.json")
    theirs_path = directory / f"{args.peer_name}.json"
    for _ in range(200):
        if theirs_path.exists():
            break
        await asyncio.sleep(0.05)
    theirs = json.loads(theirs_path.read_text())
    candidates = [c for raw in theirs["candidates"] if (c := Candidate.from_json(raw))]
    probing = time.monotonic()
    agent.set_peer(peer_public, candidates, system_clock.now())
    shell.flush()
    deadline = probing + args.seconds
    while time.monotonic() < deadline and not finished.is_set():
        if selected and time.monotonic() - probing > selected[0][0] - (probing - started) + 2:
            break
        await asyncio.sleep(0.05)
    shell.close()
    sock.close()
    return {
        "mapping": mapping,
        "mapped": [f"{h}:{p}" for h, p in sorted({r.mapped for r in results})],
        "candidates": [c.to_json() for c in mine],
        "selected": [
            {"at": round(t - (probing - started), 3), "address": list(e.address), "kind": e.kind}
            for t, e in selected
        ],
        "failed": [e.reason for e in failed],
        "path": agent.path(peer_public),
        "stats": agent.statistics()["counters"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["stun", "peer"])
    parser.add_argument("addresses", nargs="*")
    parser.add_argument("--key")
    parser.add_argument("--peer-key")
    parser.add_argument("--dir")
    parser.add_argument("--name")
    parser.add_argument("--peer-name")
    parser.add_argument("--port", type=int, default=51820)
    parser.add_argument("--tries", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    if args.mode == "stun":
        asyncio.run(serve_stun(args.addresses))
        return
    print(json.dumps(asyncio.run(peer(args))), flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
