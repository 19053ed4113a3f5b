"""whois: parsing the address a caller asks about, one spelling per address."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umbranet.agent.whois import Delivery, WhoisTable, parse_address
from umbranet.proto.e2e import PeerIdentity


def test_addresses_parse_in_both_families() -> None:
    assert parse_address("127.0.0.1:5000") == ("127.0.0.1", 5000)
    assert parse_address("[::1]:5000") == ("::1", 5000)
    assert parse_address("[::ffff:127.0.0.1]:5000") == ("127.0.0.1", 5000)
    for bad in ("", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "host:80", "1.2.3.4:x"):
        with pytest.raises(ValueError):
            parse_address(bad)


@given(st.text(max_size=60))
def test_address_parser_raises_only_value_errors(text: str) -> None:
    try:
        host, port = parse_address(text)
    except ValueError:
        return
    assert 0 < port < 65536 and host


def test_table_finds_an_entry_by_any_spelling_and_forgets_it() -> None:
    table = WhoisTable()
    peer = PeerIdentity("alice", "spiffe://t.umbra/device/alice", ("eng",))
    table.add(("::ffff:127.0.0.1", 4000), Delivery(peer, "db", "inbound", "r1"))
    found = table.lookup(parse_address("127.0.0.1:4000"))
    assert found is not None
    assert found.to_json() == {
        "name": "alice",
        "spiffe_id": "spiffe://t.umbra/device/alice",
        "attributes": ["eng"],
        "service": "db",
        "direction": "inbound",
        "router": "r1",
    }
    table.remove(("127.0.0.1", 4000))
    assert table.lookup(("127.0.0.1", 4000)) is None
    assert len(table) == 0
