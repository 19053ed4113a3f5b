"""A controller under a slowloris attack: half-sent requests are cut off, anonymous
connections are capped, and a client with a certificate is served all along."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_for
from umbranet.aio.tls import load_identity
from umbranet.controller.home import init_home, load_home
from umbranet.controller.server import build_server
from umbranet.pki import IdentityFile

pytestmark = pytest.mark.timeout(120)

# Long enough that more than MAX_ANONYMOUS attackers are open at once before the first is cut
# off even where TLS handshakes are slow: with 1 s, on a slowed machine, every attacker was
# cut off by the deadline and none reached the cap. Short enough to keep the test quick.
READ_TIMEOUT = 5.0
MAX_ANONYMOUS = 20
ATTACKERS = 60


@dataclass
class Running:
    admin: IdentityFile
    port: int


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Running]:
    port = free_port()
    _, admin = init_home(tmp_path / "home", datetime.now(UTC), address=f"127.0.0.1:{port}")
    loaded = load_home(tmp_path / "home")
    server = build_server(loaded, read_timeout=READ_TIMEOUT, max_anonymous=MAX_ANONYMOUS)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for("controller", lambda: server.started, timeout=20)
        yield Running(admin, port)
    finally:
        server.should_exit = True
        thread.join(10)
        loaded.db.dispose()


def _anonymous_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _half_sent(port: int, data: bytes) -> asyncio.StreamReader:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_anonymous_tls())
    writer.write(data)
    await writer.drain()
    reader._umbra_writer = writer  # type: ignore[attr-defined]  # keep it alive
    return reader


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server ends the connection (EOF or reset) within a bounded wait."""
    try:
        while await asyncio.wait_for(reader.read(4096), 15):
            pass
    except (ConnectionError, ssl.SSLError):
        pass
    except TimeoutError:
        return False
    return True


def test_half_sent_requests_are_cut_off_while_a_certificate_holder_is_served(
    controller: Running,
) -> None:
    base = f"https://127.0.0.1:{controller.port}"
    admin_tls = ssl.create_default_context(cadata=controller.admin.bundle.ca_pem)
    load_identity(admin_tls, controller.admin)

    async def run() -> tuple[list[bool], int, int, dict[str, int]]:
        headers_only = b"GET /v1/bundle HTTP/1.1\r\nHost: controller\r\n"
        short_body = (
            b"POST /v1/enroll HTTP/1.1\r\nHost: controller\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"token":'
        )
        attackers = [
            await _half_sent(controller.port, headers_only if n % 2 else short_body)
            for n in range(ATTACKERS)
        ]
        async with httpx.AsyncClient(base_url=base, verify=admin_tls) as admin:
            served = await admin.get("/v1/identities")  # the bystander, mid-attack
            closed = await asyncio.gather(*(_closed_by_server(r) for r in attackers))
            async with httpx.AsyncClient(base_url=base, verify=False) as anonymous:
                after = await anonymous.get("/v1/bundle")
            counters = (await admin.get("/v1/metrics")).json()["counters"]
        for reader in attackers:
            with contextlib.suppress(Exception):
                reader._umbra_writer.close()  # type: ignore[attr-defined]
        return closed, served.status_code, after.status_code, counters

    closed, served, after, counters = asyncio.run(run())
    assert served == 200
    assert all(closed), f"{closed.count(False)} half-sent requests were left open"
    assert after == 200  # anonymous clients get in again once the attackers are gone
    timed_out = counters.get('umbra_api_errors_total{code="read_timeout"}', 0)
    capped = counters.get('umbra_api_errors_total{code="too_many_anonymous"}', 0)
    assert timed_out >= 1 and capped >= 1
    assert timed_out + capped == ATTACKERS
