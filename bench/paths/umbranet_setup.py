"""Provisioning the benchmark's throwaway Umbranet network (run inside namespace B).

Why a module run in the namespace: the controller listens on B's veth address, which the
harness (in the root namespace) cannot reach. `bench.paths.umbranet` runs this with
`ip netns exec` for two steps:

- `provision --home H --out D`: wait for the controller, then create the router, the two
  services (`bench-echo`, `bench-sink`: dialed by #bench-clients, hosted by #bench-hosts) and
  two workload identities, enroll them all (keys are made here, only CSRs travel) and write
  `D/router.json`, `D/host.json`, `D/dialer.json`. With `--agent` it also creates the
  agent path's services (`bench-tcp-iperf`, `bench-tcp-echo`, `bench-tcp-sink`, whose host
  addresses are B's loopback servers) and two device identities, `D/agent-host.json` (may
  bind them) and `D/agent-dialer.json` (may dial them).
- `wait-router --home H --address HOST:PORT`: wait until the router registered that address,
  so the host's bind ticket names it.
- `mesh --home H --out D --routers N`: for the multi-hop paths, routers `bench-router2` ..
  `bench-routerN` (identity files `D/router2.json` ...), and an admin cost of 1000 on every
  link between two routers that are not neighbours in the line `bench-router`,
  `bench-router2`, ...: every router still links to every other one, but paths follow the
  line, so the dialer's router is N-1 hops from the host's.

Prints one JSON line on success; exits non-zero with the reason otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from umbranet.aio.runtime import run
from umbranet.client.controller import ControllerClient, ControllerError
from umbranet.controller.home import ControllerHome
from umbranet.pki import IdentityFile

__all__ = [
    "AGENT_DIAL_ATTRIBUTE",
    "AGENT_HOST_ATTRIBUTE",
    "AGENT_SERVICES",
    "DIAL_ATTRIBUTE",
    "HOST_ATTRIBUTE",
    "SERVICES",
    "main",
]

SERVICES = {"echo": "bench-echo", "sink": "bench-sink"}
DIAL_ATTRIBUTE = "bench-clients"
HOST_ATTRIBUTE = "bench-hosts"
# The agent path: service -> the server in B its host agent forwards to (B's loopback, where
# the harness's iperf3 and bench.rr servers listen on every address).
AGENT_SERVICES = {
    "bench-tcp-iperf": "tcp://127.0.0.1:5201",
    "bench-tcp-echo": "tcp://127.0.0.1:7007",
    "bench-tcp-sink": "tcp://127.0.0.1:7008",
}
AGENT_DIAL_ATTRIBUTE = "bench-agent-clients"
AGENT_HOST_ATTRIBUTE = "bench-agent-hosts"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.paths.umbranet_setup")
    parser.add_argument("step", choices=["provision", "wait-router", "mesh"])
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--address", default="")
    parser.add_argument("--wait", type=float, default=60.0)
    parser.add_argument("--agent", action="store_true", help="also the agent path's services")
    parser.add_argument("--routers", type=int, default=2, help="mesh: routers in the line")
    args = parser.parse_args(argv)
    admin = IdentityFile.load(ControllerHome(args.home).admin_file)
    try:
        if args.step == "provision":
            if args.out is None:
                parser.error("provision needs --out")
            result = run(_provision(admin, args.out, args.wait, args.agent))
        elif args.step == "mesh":
            if args.out is None:
                parser.error("mesh needs --out")
            result = run(_mesh(admin, args.out, args.routers))
        else:
            result = run(_wait_router(admin, args.address, args.wait))
    except (ControllerError, OSError, TimeoutError) as exc:
        print(f"{args.step} failed: {exc!r}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


async def _provision(
    admin: IdentityFile, out: Path, wait: float, agent: bool = False
) -> dict[str, object]:
    t0 = time.monotonic()
    await _wait_controller(admin, wait)
    waited = time.monotonic() - t0
    files: dict[str, str] = {}
    async with ControllerClient(admin) as client:
        created = await client.create_router("bench-router")
        files["router"] = await _enroll(created.enrollment_token, out / "router.json")
        for service in SERVICES.values():
            await client.create_service(
                service, dial_attributes=[DIAL_ATTRIBUTE], bind_attributes=[HOST_ATTRIBUTE]
            )
        for role, attribute in (("host", HOST_ATTRIBUTE), ("dialer", DIAL_ATTRIBUTE)):
            made = await client.create_identity(
                f"bench-{role}", kind="workload", attributes=[attribute]
            )
            files[role] = await _enroll(made.enrollment_token, out / f"{role}.json")
        if agent:
            await _provision_agents(client, out, files)
    return {"ok": True, "controller_wait_s": round(waited, 2), "files": files}


async def _mesh(admin: IdentityFile, out: Path, count: int) -> dict[str, object]:
    names = ["bench-router", *(f"bench-router{i}" for i in range(2, count + 1))]
    files: dict[str, str] = {}
    async with ControllerClient(admin) as client:
        for i, name in enumerate(names[1:], 2):
            created = await client.create_router(name)
            files[name] = await _enroll(created.enrollment_token, out / f"router{i}.json")
        for i, first in enumerate(names):
            for second in names[i + 2 :]:  # not neighbours in the line
                await client.set_link_cost(first, second, 1000.0)
    return {"ok": True, "files": files}


async def _provision_agents(client: ControllerClient, out: Path, files: dict[str, str]) -> None:
    for service, address in AGENT_SERVICES.items():
        await client.create_service(
            service,
            dial_attributes=[AGENT_DIAL_ATTRIBUTE],
            bind_attributes=[AGENT_HOST_ATTRIBUTE],
            host_address=address,
        )
    for role, attribute in (
        ("agent-host", AGENT_HOST_ATTRIBUTE),
        ("agent-dialer", AGENT_DIAL_ATTRIBUTE),
    ):
        made = await client.create_identity(f"bench-{role}", kind="device", attributes=[attribute])
        files[role] = await _enroll(made.enrollment_token, out / f"{role}.json")


async def _enroll(token: str, path: Path) -> str:
    (await ControllerClient.enroll(token)).save(path)
    return str(path)


async def _wait_controller(admin: IdentityFile, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            async with ControllerClient(admin, request_timeout=2) as client:
                await client.bundle()
                return
        except (ControllerError, OSError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the controller did not answer in {wait:.0f} s") from None
            await asyncio.sleep(0.2)


async def _wait_router(admin: IdentityFile, address: str, wait: float) -> dict[str, object]:
    deadline = time.monotonic() + wait
    async with ControllerClient(admin) as client:
        while time.monotonic() < deadline:
            if any(r.address == address for r in await client.routers()):
                return {"ok": True, "router": address}
            await asyncio.sleep(0.2)
    raise TimeoutError(f"no router registered {address} in {wait:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
