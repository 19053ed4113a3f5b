"""The agent's loopback listeners serve only the agent's own user by default (issue 9, item 10):
the owner of a connecting TCP socket is found in /proc/net/tcp{,6}; another user's connection
is reset before anything is dialled and counted; explicit options widen the rule."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import context, running_router
from umbranet.agent.host import Hoster
from umbranet.agent.intercept import Interceptor, PortBook
from umbranet.agent.peeruid import LocalUsers, owner_uid, parse_table, read_owner_uid
from umbranet.agent.stats import Counters
from umbranet.agent.whois import WhoisTable
from umbranet.testing import LocalNetwork

NOBODY = 65534
needs_proc = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp"
)


def _hex4(host: str, port: int) -> str:
    """How the kernel writes an IPv4 address: one 32-bit word in host byte order."""
    (word,) = struct.unpack("=I", socket.inet_aton(host))
    return f"{word:08X}:{port:04X}"


def _hex6(host: str, port: int) -> str:
    raw = socket.inet_pton(socket.AF_INET6, host)
    words = struct.unpack("=4I", raw)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"


def _row(local: str, remote: str, uid: int) -> str:
    return f"   0: {local} {remote} 01 00000000:00000000 00:00000000 00000000  {uid} 0 1 1\n"


def test_the_table_parser_reads_v4_v6_and_mapped_rows_and_skips_junk() -> None:
    table4 = HEADER + _row(_hex4("127.0.0.1", 40000), _hex4("127.0.0.1", 15001), 1000)
    table4 += _row(_hex4("127.0.0.1", 15001), _hex4("127.0.0.1", 40000), 0)  # our own end
    table4 += "   1: garbage\n   2: ZZZZ:1 0:0 01 x x x 7 notanumber\n"
    table6 = HEADER + _row(_hex6("::1", 40001), _hex6("::1", 15001), 1001)
    table6 += _row(_hex6("::ffff:127.0.0.2", 40002), _hex6("::ffff:127.0.0.1", 15001), 1002)
    rows = list(parse_table(table4))
    assert rows[0] == (("127.0.0.1", 40000), ("127.0.0.1", 15001), 1000)
    assert len(rows) == 2
    tables = [table4, table6]
    assert owner_uid(("127.0.0.1", 40000), ("127.0.0.1", 15001), tables) == 1000
    assert owner_uid(("::1", 40001), ("::1", 15001), tables) == 1001
    assert owner_uid(("127.0.0.2", 40002), ("::ffff:127.0.0.1", 15001), tables) == 1002
    assert owner_uid(("127.0.0.1", 40009), ("127.0.0.1", 15001), tables) is None


@needs_proc
def test_the_owner_of_a_real_loopback_socket_is_found() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()),
    ):
        accepted, peer = server.accept()
        with accepted:
            found = read_owner_uid(peer, accepted.getsockname())
    assert found == os.getuid()


def test_the_rule_allows_the_agents_user_and_what_was_allowed_explicitly() -> None:
    users = LocalUsers(1000)
    assert users.decide(1000).allowed
    refused = users.decide(NOBODY)
    assert not refused.allowed and "65534" in refused.reason
    assert not users.decide(None).allowed  # an owner we cannot find is not an allowed one
    assert LocalUsers(1000, frozenset({NOBODY})).decide(NOBODY).allowed
    assert LocalUsers(1000, any_user=True).decide(None).allowed


# -- through a real interceptor and router ---------------------------------------------------

CLIENT = textwrap.dedent(
    """
    import encodings.idna, os, socket, sys  # imported before the files become unreadable
    uid = int(sys.argv[2])
    if uid != os.getuid():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    sock = socket.socket()
    sock.settimeout(20)
    try:  # a refused user's RST may come before the send, even before connect returns
        sock.connect(("127.0.0.1", int(sys.argv[1])))
        sock.sendall(b"hello")
        data = sock.recv(100)
        print("echo" if data == b"hello" else "eof" if not data else "other")
    except (ConnectionResetError, BrokenPipeError):
        print("reset")
    """
)


async def _client(port: int, uid: int) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(port), str(uid), stdout=subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    return out.decode().strip()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def _run_interceptor(network: LocalNetwork, tmp_path: Path, users: LocalUsers | None) -> dict:
    async def main() -> dict:
        app = await asyncio.start_server(_echo, "127.0.0.1", 0)
        app_port = app.sockets[0].getsockname()[1]
        async with (
            app,
            running_router(network),
            context(network, "web", "server") as host,
            context(network, "alice", "client") as client,
        ):
            counters = Counters()
            hoster = Hoster(host, WhoisTable(), Counters())
            interceptor = Interceptor(
                client,
                PortBook(tmp_path / "ports.json", {}),
                WhoisTable(),
                counters,
                users=users,
            )
            try:
                hoster.ensure("echo", f"tcp://127.0.0.1:{app_port}")
                for _ in range(500):
                    listener = hoster.hosted["echo"].listener
                    if listener is not None and listener.bound_routers:
                        break
                    await asyncio.sleep(0.02)
                entry = await interceptor.ensure("echo")
                own = await _client(entry.port, os.getuid())
                nobody = await _client(entry.port, NOBODY)
                return {"own": own, "nobody": nobody, "counters": counters.snapshot()}
            finally:
                await interceptor.close()
                await hoster.close()

    return asyncio.run(main())


root_only = pytest.mark.skipif(
    os.getuid() != 0, reason="making a connection as another user (nobody) needs root"
)


@needs_proc
@root_only
def test_another_local_user_is_refused_and_the_agents_user_is_served(
    network: LocalNetwork, tmp_path: Path
) -> None:
    result = _run_interceptor(network, tmp_path, None)
    assert result["own"] == "echo"
    assert result["nobody"] == "reset"
    assert result["counters"].get("local_user_refused") == 1
    assert result["counters"].get("dial_streams") == 1  # only the agent's user was dialled


@needs_proc
@root_only
def test_an_allowed_uid_is_served(network: LocalNetwork, tmp_path: Path) -> None:
    users = LocalUsers(os.getuid(), frozenset({NOBODY}))
    result = _run_interceptor(network, tmp_path, users)
    assert (result["own"], result["nobody"]) == ("echo", "echo")
    assert "local_user_refused" not in result["counters"]
