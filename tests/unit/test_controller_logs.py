"""Peer-supplied strings (paths, service names, reasons) cannot forge controller log lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.controller_harness import Harness, make_harness
from umbranet.controller.logfmt import MAX_LOGGED, safe

FORGED = "db\n2026-12-04 INFO umbranet.controller.audit: audit action=identity.enable actor=admin"


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def test_a_newline_in_a_service_name_or_path_stays_on_one_log_line(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    alice = h.new_device("alice")
    caplog.set_level(logging.DEBUG, logger="umbranet")
    response = h.client(alice).post("/v1/tickets", json={"service": FORGED, "action": "dial"})
    assert response.status_code == 403
    h.client(alice).get("/v1/identities/x%0aINFO%20forged")
    h.client(h.admin).get("/v1/identities/x%0d%0aINFO%20forged")
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("umbranet")]
    assert any("audit action=access.deny" in m for m in messages)
    assert any("request refused" in m and "forged" in m for m in messages)
    for message in messages:
        assert "\n" not in message and "\r" not in message, message


@given(st.text())
def test_safe_output_is_one_printable_ascii_line(text: str) -> None:
    out = safe(text)
    assert all(0x20 <= ord(c) < 0x7F for c in out)
    assert len(out) <= MAX_LOGGED * 10 + 8
    if text.isascii() and text.isprintable() and "\\" not in text and len(text) <= MAX_LOGGED:
        assert out == text
