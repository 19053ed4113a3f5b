"""Overlay address allocation: stable, distinct, inside the ranges, and honest when full."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.policy.addressing import (
    AddressAllocator,
    AddressingUsageError,
    AddressPoolExhausted,
    ula_prefix,
)

PREFIX = ula_prefix("acme.umbra")
IDS = st.text(min_size=1, max_size=40)


def _allocator(**kwargs: object) -> AddressAllocator:
    return AddressAllocator(ipv6_prefix=PREFIX, **kwargs)  # type: ignore[arg-type]


def test_ula_prefix_is_a_stable_fd_slash_48() -> None:
    assert PREFIX.prefixlen == 48
    assert PREFIX.subnet_of(ipaddress.IPv6Network("fd00::/8"))
    assert ula_prefix("acme.umbra") == PREFIX
    assert ula_prefix("other.umbra") != PREFIX


def test_addresses_come_from_the_configured_ranges() -> None:
    got = _allocator().assign("spiffe://acme.umbra/device/alice-laptop")
    assert got.ipv4 in ipaddress.IPv4Network("100.64.0.0/10")
    assert got.ipv6 in PREFIX
    custom = AddressAllocator(ipv4_range="198.19.0.0/16", ipv6_prefix="fd12:3456:789a::/48")
    again = custom.assign("spiffe://acme.umbra/device/alice-laptop")
    assert again.ipv4 in ipaddress.IPv4Network("198.19.0.0/16")


@settings(max_examples=50, deadline=None)
@given(st.lists(IDS, unique=True, min_size=1, max_size=60), st.randoms())
def test_same_id_same_address_whatever_the_order(ids: list[str], rnd: object) -> None:
    alone = {i: _allocator().assign(i) for i in ids}  # each id's first candidate
    first = _allocator()
    forward = {i: first.assign(i) for i in ids}
    shuffled = list(ids)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    second = _allocator()
    backward = {i: second.assign(i) for i in shuffled}
    assert len({a.ipv4 for a in forward.values()}) == len(ids)
    assert len({a.ipv6 for a in forward.values()}) == len(ids)
    for identity, addresses in forward.items():
        assert first.owner_of(str(addresses.ipv4)) == identity
        assert first.owner_of(str(addresses.ipv6)) == identity
    # Where no two first candidates collide (nearly always, in 4 million addresses), every
    # id gets its first candidate and nothing depends on arrival order.
    if len({a.ipv4 for a in alone.values()}) == len({a.ipv6 for a in alone.values()}) == len(ids):
        assert forward == backward == alone


@settings(max_examples=50, deadline=None)
@given(st.lists(IDS, unique=True, min_size=1, max_size=14))
def test_a_small_pool_hands_out_every_host_once_then_refuses(ids: list[str]) -> None:
    # 198.19.0.0/28: 14 hosts (not .0, not .15), minus the reserved .1.
    allocator = AddressAllocator(
        ipv4_range="198.19.0.0/28", ipv6_prefix="fd00::/120", reserved=["198.19.0.1"]
    )
    got = []
    for identity in ids[:13]:
        got.append(allocator.assign(identity).ipv4)
    assert len(set(got)) == len(got)
    for address in got:
        assert address not in {
            ipaddress.IPv4Address("198.19.0.0"),
            ipaddress.IPv4Address("198.19.0.1"),
            ipaddress.IPv4Address("198.19.0.15"),
        }
    if len(ids) == 14:
        with pytest.raises(AddressPoolExhausted):
            allocator.assign(ids[13])
        assert allocator.lookup(ids[13]) is None


def test_assign_is_idempotent_and_release_frees() -> None:
    allocator = _allocator()
    first = allocator.assign("alice")
    assert allocator.assign("alice") is first
    assert allocator.release("alice") == first
    assert allocator.owner_of(str(first.ipv4)) is None
    assert allocator.assign("alice") == first  # derived again: the same address


def test_a_collision_moves_only_the_newcomer() -> None:
    allocator = AddressAllocator(ipv4_range="198.19.0.0/29", ipv6_prefix="fd00::/120")
    alice = allocator.assign("alice")
    # Whoever else wants alice's address gets another one; alice keeps hers.
    others = [allocator.assign(f"id{i}") for i in range(5)]
    assert alice.ipv4 not in {o.ipv4 for o in others}
    assert allocator.lookup("alice") == alice


def test_restore_takes_back_stored_assignments_and_refuses_conflicts() -> None:
    allocator = _allocator()
    stored = _allocator().assign("bob")
    restored = allocator.restore("bob", str(stored.ipv4), str(stored.ipv6))
    assert restored == stored
    assert allocator.restore("bob", str(stored.ipv4), str(stored.ipv6)) == stored
    with pytest.raises(AddressingUsageError):
        allocator.restore("carol", str(stored.ipv4), "fd00::1")  # taken / outside
    with pytest.raises(AddressingUsageError):
        allocator.restore("carol", "10.0.0.1", str(PREFIX.network_address + 5))
    # A new identity never gets a restored address.
    assert allocator.assign("dave").ipv4 != stored.ipv4


def test_bad_ranges_are_the_callers_mistake() -> None:
    with pytest.raises(AddressingUsageError):
        AddressAllocator(ipv4_range="100.64.0.0/31", ipv6_prefix=PREFIX)
    with pytest.raises(AddressingUsageError):
        AddressAllocator(ipv4_range="not a range", ipv6_prefix=PREFIX)
