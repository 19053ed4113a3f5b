"""Live revocation with real controller and router processes: access removed -> streams close.

The router follows the controller's event stream; when an identity is disabled or a service
deleted, its live circuits are reset with `revoked` and the reason, at both ends, and the
next dial is refused.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import echo_forever, free_port
from umbranet.quickstart import Quickstart
from umbranet.sdk import Context, DialError, StreamReset

T = TypeVar("T")


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    net = Quickstart(
        tmp_path_factory.mktemp("revoke"),
        router_port=free_port(),
        controller_port=free_port(),
        say=lambda _m: None,
    )
    try:
        net.start_core()
        yield net
    finally:
        net.stop()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run with a bound, so a regression fails this test instead of hanging CI."""
    return asyncio.run(asyncio.wait_for(coroutine, 60))


async def _revoke_during_stream(
    net: Quickstart, client_file: Path, host_file: Path, service: str, revoke: object
) -> tuple[StreamReset, float]:
    async with Context.from_file(host_file) as host, Context.from_file(client_file) as client:
        listener = await host.listen(service).start()
        server = asyncio.get_running_loop().create_task(echo_forever(listener))
        stream = await client.dial(service)
        stream.write(b"ping")
        assert await stream.readexactly(4) == b"ping"
        started = time.perf_counter()
        async with net.admin() as admin:
            await revoke(admin)  # type: ignore[operator]
        with pytest.raises(StreamReset) as info:
            for _ in range(1000):  # bounded: each read waits for the router's push
                stream.write(b"x")
                await stream.read(1)
        elapsed = time.perf_counter() - started
        server.cancel()
        await listener.close()
        return info.value, elapsed


def test_disabling_an_identity_closes_its_live_stream_and_refuses_new_dials(
    network: Quickstart,
) -> None:
    _run(network.ensure_service("rv1", ["rv1-c"], ["rv1-h"]))
    host_file = _run(network.enroll("rv1-host", ["rv1-h"]))
    client_file = _run(network.enroll("rv1-client", ["rv1-c"]))

    async def disable(admin: object) -> None:
        await admin.disable_identity("rv1-client")  # type: ignore[attr-defined]

    error, elapsed = _run(_revoke_during_stream(network, client_file, host_file, "rv1", disable))
    assert error.code == "revoked"
    assert "disabled" in error.reason
    print(f"\nrevocation delay (disable -> stream reset): {elapsed * 1000:.0f} ms")

    async def dial_again() -> DialError:
        async with Context.from_file(client_file) as client:
            with pytest.raises(DialError) as info:
                await client.dial("rv1")
            return info.value

    assert _run(dial_again()).code == "identity_disabled"


def test_revoking_certificates_closes_live_streams_and_refuses_the_old_key(
    network: Quickstart, tmp_path: Path
) -> None:
    _run(network.ensure_service("rv4", ["rv4-c"], ["rv4-h"]))
    host_file = _run(network.enroll("rv4-host", ["rv4-h"]))
    client_file = _run(network.enroll("rv4-client", ["rv4-c"]))
    tokens: list[str] = []

    async def revoke(admin: object) -> None:
        tokens.append(await admin.revoke_certificates("rv4-client"))  # type: ignore[attr-defined]

    error, elapsed = _run(_revoke_during_stream(network, client_file, host_file, "rv4", revoke))
    assert error.code == "revoked"
    assert "certificates of rv4-client were revoked" in error.reason
    print(f"\nrevocation delay (certificate revoked -> stream reset): {elapsed * 1000:.0f} ms")

    async def dial(identity: Path) -> DialError | None:
        async with Context.from_file(identity) as client:
            try:
                stream = await client.dial("rv4")
            except DialError as exc:
                return exc
            stream.close()
            return None

    refused = _run(dial(client_file))
    assert refused is not None and refused.code == "cert_revoked"

    # The one-time token from the revocation enrolls a new key, which works at once.
    fresh = tmp_path / "rv4-client-new.json"
    enrolled = subprocess.run(
        [sys.executable, "-m", "umbranet.cli.main", "enroll", tokens[0], "--output", str(fresh)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    assert _run(dial_and_echo(network, fresh, host_file, "rv4")) == b"ping"


async def dial_and_echo(net: Quickstart, client_file: Path, host_file: Path, service: str) -> bytes:
    async with Context.from_file(host_file) as host, Context.from_file(client_file) as client:
        listener = await host.listen(service).start()
        server = asyncio.get_running_loop().create_task(echo_forever(listener))
        stream = await client.dial(service)
        stream.write(b"ping")
        answer = await stream.readexactly(4)
        stream.close()
        server.cancel()
        await listener.close()
        return answer


def test_deleting_a_service_closes_its_streams(network: Quickstart) -> None:
    _run(network.ensure_service("rv2", ["rv2-c"], ["rv2-h"]))
    host_file = _run(network.enroll("rv2-host", ["rv2-h"]))
    client_file = _run(network.enroll("rv2-client", ["rv2-c"]))

    async def delete(admin: object) -> None:
        await admin.delete_service("rv2")  # type: ignore[attr-defined]

    error, _elapsed = _run(_revoke_during_stream(network, client_file, host_file, "rv2", delete))
    assert error.code == "revoked"
    assert "rv2" in error.reason


def test_removing_a_policy_rule_closes_its_streams(network: Quickstart) -> None:
    _run(network.ensure_service("rv3", ["rv3-c"], ["rv3-h"]))
    host_file = _run(network.enroll("rv3-host", ["rv3-h"]))
    client_file = _run(network.enroll("rv3-client", ["rv3-c"]))
    bind = '{"action": "bind", "src": ["rv3-host"], "dst": ["svc:rv3"]}'
    dial = '{"action": "dial", "src": ["rv3-client"], "dst": ["svc:rv3"]}'

    async def allow(admin: object) -> None:
        text = f'{{"rules": [{bind}, {dial}]}}'
        await admin.set_policy(text, "rv3 allowed")  # type: ignore[attr-defined]

    async def remove_dial(admin: object) -> None:
        await admin.set_policy(f'{{"rules": [{bind}]}}', "rv3 dial removed")  # type: ignore[attr-defined]

    async def apply_first() -> None:
        async with network.admin() as admin:
            await allow(admin)

    _run(apply_first())
    error, elapsed = _run(
        _revoke_during_stream(network, client_file, host_file, "rv3", remove_dial)
    )
    assert error.code == "revoked"
    assert error.reason
    print(f"\nrevocation delay (policy change -> stream reset): {elapsed * 1000:.0f} ms")

    async def dial_again() -> DialError:
        async with Context.from_file(client_file) as client:
            with pytest.raises(DialError) as info:
                await client.dial("rv3")
            return info.value

    assert _run(dial_again()).code == "not_authorized"
