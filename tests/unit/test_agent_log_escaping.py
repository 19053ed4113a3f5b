"""Reasons that come from a peer (a router's or host's refusal, a reset's reason, a request
on the local API) are logged escaped: a newline in them cannot forge a second log line
(issue 9, item 22)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from umbranet.agent.localapi import LocalApiServer
from umbranet.agent.outbound import carry_outbound
from umbranet.agent.stats import Counters
from umbranet.agent.whois import WhoisTable
from umbranet.sdk import DialError

FORGED = "refused\n2026-01-01 00:00:00 INFO umbranet.agent: admin logged in\x1b[2J"


def _one_line_each(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [record.getMessage() for record in caplog.records]
    for line in lines:
        assert "\n" not in line and "\x1b" not in line, line
    return lines


class RefusingContext:
    async def dial(self, service: str, port: int | None = None) -> Any:
        raise DialError("not_authorized", FORGED)


def test_a_peers_refusal_reason_is_logged_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> str | None:
        result: list[str | None] = []

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            result.append(
                await carry_outbound(
                    RefusingContext(),  # type: ignore[arg-type]
                    "web",
                    reader,
                    writer,
                    port=None,
                    whois=WhoisTable(),
                    counters=Counters(),
                    counter="dial_streams",
                )
            )

        server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        async with server:
            _, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
            for _ in range(500):
                if result:
                    break
                await asyncio.sleep(0.01)
            writer.close()
        return result[0]

    with caplog.at_level(logging.INFO, logger="umbranet"):
        failure = asyncio.run(main())
    assert failure is not None and "not_authorized" in failure
    lines = _one_line_each(caplog)
    assert any("dial web failed" in line and "\\n2026-01-01" in line for line in lines)


def test_a_garbage_local_api_request_is_logged_on_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async def handler(request: Any) -> tuple[int, Any]:
            return 200, {}

        api = LocalApiServer(tmp_path / "agent.sock", handler, Counters())
        await api.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "agent.sock"))
            writer.write(b"GET /v1/status\x1b[2J HTTP/1.1\r\nBad\nHeader\r\n\r\n")
            await writer.drain()
            await asyncio.wait_for(reader.read(), 10)
            writer.close()
        finally:
            await api.close()

    with caplog.at_level(logging.INFO, logger="umbranet"):
        asyncio.run(main())
    _one_line_each(caplog)
