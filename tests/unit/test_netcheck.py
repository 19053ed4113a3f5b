"""`umbra netcheck` and the STUN server over loopback sockets."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from umbranet.aio.nat import local_addresses, netcheck, parse_hostport
from umbranet.aio.stun_server import StunServer

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_two_servers_see_one_socket_alike_and_a_dead_one_times_out() -> None:
    async def main() -> None:
        async with StunServer("127.0.0.1", 0) as one, StunServer("127.0.0.1", 0) as two:
            dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            dead.bind(("127.0.0.1", 0))  # bound, never answers
            servers = [parse_hostport(s.address) for s in (one, two)]
            servers.append(dead.getsockname())
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            try:
                report = await netcheck(servers, sock=sock, timeout=5.0, local=["198.18.0.7"])
            finally:
                sock.close()
                dead.close()
            assert report.udp
            assert report.mapped == [sock_name(report)]
            assert report.mapping == "endpoint-independent"
            assert report.rtt[f"{servers[2][0]}:{servers[2][1]}"] is None
            assert report.home in {one.address, two.address}
            assert one.statistics() == {"binding_requests": 1}

    asyncio.run(main())


def sock_name(report: object) -> tuple[str, int]:
    local = report.local  # type: ignore[attr-defined]
    return str(local[0]), int(local[1])


def test_nothing_answering_means_udp_blocked() -> None:
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    try:
        report = asyncio.run(netcheck([dead.getsockname()], timeout=2.0, local=[]))
    finally:
        dead.close()
    assert not report.udp and report.mapping == "udp-blocked" and report.home is None


def test_cli_prints_json() -> None:
    async def main() -> str:
        async with StunServer("127.0.0.1", 0) as one, StunServer("127.0.0.1", 0) as two:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "umbranet.cli.main", "netcheck", "--json",
                "--stun", one.address, "--stun", two.address, "--timeout", "5",
                stdout=subprocess.PIPE,
                env=dict(os.environ, PYTHONPATH=SRC),
            )  # fmt: skip
            stdout, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0
            return stdout.decode()

    data = json.loads(asyncio.run(main()))
    assert data["udp"] is True
    assert data["mapping"] in {"endpoint-independent", "no-nat"}
    assert len(data["rtt_ms"]) == 2 and all(v is not None for v in data["rtt_ms"].values())


def test_local_addresses_skip_named_interfaces() -> None:
    """Network mode skips its TUN: an overlay address as a candidate would loop the tunnel."""
    assert "127.0.0.1" in local_addresses()
    assert "127.0.0.1" not in local_addresses(skip=["lo"])


def test_router_statistics_carry_the_stun_port_counts() -> None:
    from umbranet.router.metrics import RouterCollector
    from umbranet.router.runner import with_stun

    async def main() -> dict[str, object]:
        async with StunServer("127.0.0.1", 0) as server:
            await netcheck([parse_hostport(server.address)], timeout=5.0, local=[])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"\x00\x01\x00\x00garbage-not-stun!!!", parse_hostport(server.address))
            for _ in range(100):
                if sum(server.statistics().values()) >= 2:
                    break
                await asyncio.sleep(0.01)
            return dict(with_stun({"counters": {"dials": 3}}, [server]))

    stats = asyncio.run(main())
    assert stats["counters"] == {"dials": 3, "stun_binding_requests": 1, "stun_bad_cookie": 1}
    families = {m.name: m for m in RouterCollector(lambda: stats).collect()}
    assert families["umbra_router_stun_binding_requests"].samples[0].value == 1
    refused = families["umbra_router_refused"].samples
    assert any(s.labels.get("code") == "stun_bad_cookie" and s.value == 1 for s in refused)
