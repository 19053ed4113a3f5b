"""A bind ticket goes to every dialer in the handshake: it must carry no host attributes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controller_harness import Harness, make_harness
from umbranet.pki import verify_ticket


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def test_bind_ticket_names_no_attributes_and_dial_ticket_keeps_them(h: Harness) -> None:
    body = {"name": "db", "dial_attributes": ["eng"], "bind_attributes": ["dbhost"]}
    assert h.client(h.admin).post("/v1/services", json=body).status_code == 201
    host = h.new_device("dbserver", ["dbhost", "pci-zone"])
    alice = h.new_device("alice", ["eng"])
    bundle = h.loaded.authority.bundle

    bind = h.client(host).post("/v1/tickets", json={"service": "db", "action": "bind"})
    dial = h.client(alice).post("/v1/tickets", json={"service": "db", "action": "dial"})
    assert bind.status_code == 200 and dial.status_code == 200, (bind.text, dial.text)
    assert verify_ticket(bind.json()["ticket"], bundle, h.clock()).attributes == ()
    assert verify_ticket(dial.json()["ticket"], bundle, h.clock()).attributes == ("eng",)
