"""Cryptokey routing: the integer longest-prefix table against `ipaddress` as the reference."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.proto.wireguard.ip import AllowedIps, packet_fields

_v4_nets = st.builds(
    lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
_v6_nets = st.builds(
    lambda a, p: ipaddress.IPv6Network((a, p), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
_probes = st.lists(
    st.one_of(
        st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
        st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
    ),
    max_size=10,
)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _longest_match(reference: dict[Network, int], address: ipaddress._BaseAddress) -> int | None:
    """The owner `ipaddress` says holds `address` most specifically (the reference answer)."""
    holding = [n for n in reference if n.version == address.version and address in n]
    return reference[max(holding, key=lambda n: n.prefixlen)] if holding else None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.one_of(_v4_nets, _v6_nets), st.integers(0, 4)), max_size=12),
    _probes,
)
def test_lookup_is_longest_prefix_match(
    entries: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]],
    probes: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    table: AllowedIps[int] = AllowedIps()
    reference: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int] = {}
    for network, owner in entries:
        table.add([network], owner)
        reference[network] = owner  # a later owner takes the network over
    # Probe inside each network too, not only at random.
    probes = probes + [network.network_address for network, _ in entries]
    for address in probes:
        expected = _longest_match(reference, address)
        assert table.lookup(address.version, int(address)) == expected
        assert table.owner_of(address.packed) == expected  # and again, from the memo
        assert table.owner_of(address.packed) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.one_of(_v4_nets, _v6_nets), st.integers(0, 4)),
            st.tuples(st.just("remove"), st.none(), st.integers(0, 4)),
        ),
        max_size=20,
    ),
    _probes,
)
def test_adds_and_removals_keep_the_table_equal_to_a_reference(
    steps: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network | None, int]],
    probes: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    table: AllowedIps[int] = AllowedIps()
    reference: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int] = {}
    for action, network, owner in steps:
        if action == "add" and network is not None:
            table.add([network], owner)
            reference[network] = owner
            probes = [*probes, network.network_address]
        else:
            table.remove_owner(owner)
            reference = {n: o for n, o in reference.items() if o != owner}
    for owner in range(5):
        held = sorted((n for n, o in reference.items() if o == owner), key=str)
        assert sorted(table.networks_of(owner), key=str) == held
    for address in probes:
        expected = _longest_match(reference, address)
        assert table.owner_of(address.packed) == expected


def test_low_ipv6_networks_stay_ipv6() -> None:
    table: AllowedIps[str] = AllowedIps()
    table.add(["::/0", "::1/128", "0.0.0.0/0"], "a")
    assert sorted(map(str, table.networks_of("a"))) == ["0.0.0.0/0", "::/0", "::1/128"]
    assert table.owner_of(ipaddress.IPv6Address("2001:db8::1").packed) == "a"


def test_the_memoised_lookup_follows_every_change_of_the_networks() -> None:
    table: AllowedIps[str] = AllowedIps()
    inside = ipaddress.IPv4Address("10.1.2.3").packed
    assert table.owner_of(inside) is None
    table.add(["10.0.0.0/8"], "a")
    assert table.owner_of(inside) == "a"
    table.add(["10.1.0.0/16"], "b")
    assert table.owner_of(inside) == "b"
    table.remove_owner("b")
    assert table.owner_of(inside) == "a"
    table.add(["10.0.0.0/8"], "c")  # a network taken over, as `wg set` does
    assert table.owner_of(inside) == "c"


def test_networks_of_and_removal() -> None:
    table: AllowedIps[str] = AllowedIps()
    table.add(["10.0.0.0/8", "fd00::/64"], "a")
    table.add(["10.1.0.0/16"], "b")
    assert sorted(map(str, table.networks_of("a"))) == ["10.0.0.0/8", "fd00::/64"]
    table.remove_owner("b")
    assert table.lookup(4, int(ipaddress.IPv4Address("10.1.2.3"))) == "a"


def test_packet_fields_refuses_what_is_not_a_whole_ip_packet() -> None:
    assert packet_fields(b"") is None
    assert packet_fields(bytes([0x45]) + bytes(10)) is None  # too short for IPv4
    header = bytearray(20)
    header[0], header[3] = 0x45, 40  # claims 40 bytes, has 20
    assert packet_fields(bytes(header)) is None
    assert packet_fields(bytes([0x60]) + bytes(20)) is None  # too short for IPv6
    assert packet_fields(bytes([0x50]) + bytes(40)) is None  # version 5
