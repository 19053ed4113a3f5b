"""Picking among several hosts of a service at one router: each strategy, precedence, and
health after failed dials (`router/terminators.py`)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.router.terminators import FAIL_HOLD, STRATEGIES, Binding, TerminatorTable


class FakeLink:
    """A link with some live circuits (the table's load measure)."""

    def __init__(self, name: str, circuits: int = 0) -> None:
        self.name = name
        self.routes = dict.fromkeys(range(circuits))


def _table(strategy: str | None = None, seed: int = 1) -> tuple[TerminatorTable, list[Binding]]:
    table = TerminatorTable(rng=random.Random(seed))
    bindings = [
        Binding(FakeLink(f"h{i}"), 1, "echo", f"host{i}", expires_at=1000) for i in range(3)
    ]
    for binding in bindings:
        table.add(binding)
    if strategy is not None:
        table.set_strategies({"echo": strategy})
    return table, bindings


def _picks(table: TerminatorTable, n: int, dialer: str = "") -> Counter[str]:
    picked = Counter[str]()
    for _ in range(n):
        chosen = table.pick("echo", 10, dialer=dialer)
        assert chosen is not None
        picked[chosen.identity] += 1
    return picked


def test_smart_sends_dials_to_the_least_loaded_host_and_spreads_ties() -> None:
    table, (a, b, _c) = _table()
    assert table.strategy("echo") == "smart"
    assert sorted(_picks(table, 30).values()) == [10, 10, 10]  # equal load: turns
    assert isinstance(a.link, FakeLink) and isinstance(b.link, FakeLink)
    a.link.routes = dict.fromkeys(range(5))
    b.link.routes = dict.fromkeys(range(2))
    assert set(_picks(table, 10)) == {"host2"}  # c has no circuits at all


def test_weighted_follows_the_weights_given_on_bind() -> None:
    table, (a, b, c) = _table("weighted")
    a.weight, b.weight, c.weight = 8, 2, 0
    picked = _picks(table, 1000)
    assert picked["host2"] == 0
    assert 700 < picked["host0"] < 900 and 100 < picked["host1"] < 300


def test_random_uses_every_host_and_replays_with_the_same_seed() -> None:
    first, _ = _table("random", seed=7)
    again, _ = _table("random", seed=7)
    picked = _picks(first, 300)
    assert set(picked) == {"host0", "host1", "host2"}
    assert picked == _picks(again, 300)


def test_sticky_keeps_each_dialer_on_its_host_while_it_lives() -> None:
    table, _bindings = _table("sticky")
    homes = {d: table.pick("echo", 10, dialer=d) for d in ("alice", "bob", "carol")}
    for dialer, home in homes.items():
        assert home is not None
        assert set(_picks(table, 5, dialer)) == {home.identity}
    gone = homes["alice"]
    assert gone is not None
    table.remove(gone.link, gone.binding_id)
    moved = table.pick("echo", 10, dialer="alice")
    assert moved is not None and moved is not gone
    assert set(_picks(table, 5, "alice")) == {moved.identity}  # sticks to the new one


def test_precedence_keeps_standbys_idle_until_no_primary_is_healthy() -> None:
    table, (a, b, c) = _table("precedence")
    b.precedence = c.precedence = 1
    assert set(_picks(table, 10)) == {"host0"}
    table.failed(a, 10)
    assert set(_picks(table, 10)) == {"host1"}  # the earliest-bound standby
    # Every strategy honours precedence: smart spreads over the standbys only now.
    table.set_strategies({"echo": "smart"})
    assert set(_picks(table, 10)) == {"host1", "host2"}
    table.succeeded(a)
    assert set(_picks(table, 10)) == {"host0"}


def test_a_failed_host_is_passed_over_for_a_while_unless_it_is_the_only_one() -> None:
    table, (a, b, c) = _table()
    table.failed(a, 10)
    table.failed(b, 10)
    assert set(_picks(table, 6)) == {"host2"}
    later = table.pick("echo", 10 + FAIL_HOLD)
    assert later is not None  # the hold is over: all three compete again
    table.failed(c, 10)
    assert table.pick("echo", 11) is not None  # all unhealthy: better a maybe than a no
    assert table.counters["terminator_failed"] == 3


def test_a_dial_never_goes_back_to_a_host_it_already_tried() -> None:
    table, (a, b, c) = _table()
    tried = [(a.link, 1), (c.link, 1)]
    assert table.pick("echo", 10, exclude=tried) is b
    assert table.pick("echo", 10, exclude=[*tried, (b.link, 1)]) is None


def test_renewing_a_binding_keeps_its_health() -> None:
    table, (a, _b, _c) = _table()
    table.failed(a, 10)
    renewed = Binding(a.link, 1, "echo", "host0", expires_at=5000)
    table.add(renewed)
    assert renewed.failed_until == 10 + FAIL_HOLD and len(table) == 3


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["smart", "weighted", "random", "sticky", "precedence", "bogus"]),
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 2), st.booleans()), min_size=1, max_size=6
    ),
    st.integers(0, 2**32),
)
def test_every_pick_is_a_live_binding_of_the_best_precedence_among_healthy_ones(
    strategy: str, hosts: list[tuple[int, int, bool]], seed: int
) -> None:
    table = TerminatorTable(rng=random.Random(seed))
    table.set_strategies({"echo": strategy})
    bindings = []
    for i, (weight, precedence, failed) in enumerate(hosts):
        binding = Binding(FakeLink(str(i)), i, "echo", str(i), 1000, weight, precedence)
        table.add(binding)
        if failed:
            table.failed(binding, 10)
        bindings.append(binding)
    healthy = [b for b in bindings if b.failed_until <= 11] or bindings
    best = min(b.precedence for b in healthy)
    for dialer in ("", "alice", "bob"):
        chosen = table.pick("echo", 11, dialer=dialer)
        assert chosen in healthy and chosen.precedence == best
    assert table.pick("echo", 1000) is None  # all expired
    assert len(table) == 0


def test_an_in_session_dial_names_its_host_and_sticky_sends_it_there() -> None:
    table, (a, b, c) = _table("sticky")
    first = table.pick("echo", 10, dialer="alice")
    assert first is not None
    other = next(x for x in (a, b, c) if x is not first)
    # The session is with `other` (made through another router, say): the hint wins.
    assert table.pick("echo", 10, dialer="alice", host=other.identity) is other
    assert table.counters["picked_session_host"] == 1
    # Precedence still comes first: a standby holding the session gets nothing.
    other.precedence = 1
    assert table.pick("echo", 10, dialer="alice", host=other.identity) is not other


def test_other_strategies_spread_dials_whatever_session_they_name() -> None:
    table, (a, _b, _c) = _table("smart")
    picked = Counter[str]()
    for _ in range(30):
        chosen = table.pick("echo", 10, dialer="alice", host=a.identity)
        assert chosen is not None
        picked[chosen.identity] += 1
    assert sorted(picked.values()) == [10, 10, 10]
    assert table.counters["picked_session_host"] == 0


def test_a_lone_host_gets_every_dial_counted_until_its_binding_expires() -> None:
    table = TerminatorTable()
    host = Binding(FakeLink("h"), 1, "echo", "host", expires_at=1000)
    table.add(host)
    assert [table.pick("echo", 10, host="host") for _ in range(3)] == [host] * 3
    assert table.counters["picked_smart"] == 3
    tried = [(host.link, host.binding_id)]
    assert table.pick("echo", 10, exclude=tried) is None  # a dial never goes back
    assert table.pick("echo", 1000) is None
    assert len(table) == 0


def _processes(strategy: str) -> tuple[TerminatorTable, list[Binding]]:
    """Three host processes of ONE identity (replicas), each binding with its instance."""
    table = TerminatorTable(rng=random.Random(3))
    bindings = [
        Binding(FakeLink(f"h{i}"), 1, "echo", "web", expires_at=1000, instance=f"i{i}")
        for i in range(3)
    ]
    for binding in bindings:
        table.add(binding)
    table.set_strategies({"echo": strategy})
    return table, bindings


def test_an_in_session_dial_naming_its_process_reaches_it_under_every_strategy() -> None:
    for strategy in ("smart", "weighted", "random", "sticky", "precedence"):
        table, (_a, b, _c) = _processes(strategy)
        b.precedence = 1  # a standby that holds the session still gets its opens
        b.failed_until = 50  # and one recently failed: no other process could take them
        picks = {id(table.pick_instance("echo", 10, "web", "i1")) for _ in range(20)}
        assert picks == {id(b)}, strategy
        assert table.counters["picked_session_host"] == 20


def test_an_instance_is_matched_only_with_its_identity_and_while_it_lives() -> None:
    table, (a, _b, _c) = _processes("random")
    # Another identity claiming the same instance id is not that process.
    assert table.pick_instance("echo", 10, "mallory", "i0") is None
    assert table.pick_instance("echo", 10, "web", "nope") is None
    assert table.pick_instance("echo", 10, "web", "i0", exclude=[(a.link, 1)]) is None
    assert table.pick_instance("echo", 1000, "web", "i0") is None  # its ticket expired
    assert table.counters["picked_session_host"] == 0


@settings(max_examples=80, deadline=None)
@given(
    hosts=st.lists(
        st.tuples(
            st.sampled_from(["web", "api"]),  # identity
            st.sampled_from(["i0", "i1", "i2"]),  # instance
            st.integers(0, 2),  # precedence
            st.booleans(),  # failed recently
            st.booleans(),  # expired
        ),
        max_size=8,
    ),
    strategy=st.sampled_from(sorted(STRATEGIES)),
    host=st.sampled_from(["web", "api"]),
    instance=st.sampled_from(["i0", "i1", "i2"]),
    tried=st.sets(st.integers(0, 7), max_size=3),
)
def test_a_named_process_is_picked_exactly_when_a_live_untried_binding_of_it_exists(
    hosts: list[tuple[str, str, int, bool, bool]],
    strategy: str,
    host: str,
    instance: str,
    tried: set[int],
) -> None:
    table = TerminatorTable(rng=random.Random(0))
    table.set_strategies({"echo": strategy})
    bindings = []
    for i, (identity, inst, rank, failed, expired) in enumerate(hosts):
        binding = Binding(FakeLink(f"h{i}"), i, "echo", identity, 5 if expired else 1000)
        binding.instance, binding.precedence = inst, rank
        binding.failed_until = 50 if failed else 0
        table.add(binding)
        bindings.append(binding)
    exclude = [(b.link, b.binding_id) for b in bindings if b.binding_id in tried]
    fits = [
        b
        for b in bindings
        if b.identity == host
        and b.instance == instance
        and b.expires_at > 10
        and b.binding_id not in tried
    ]
    chosen = table.pick_instance("echo", 10, host, instance, exclude=exclude)
    if not fits:
        assert chosen is None
    else:
        assert chosen is not None and any(chosen is b for b in fits)
        healthy = [b for b in fits if b.failed_until <= 10]
        assert not healthy or chosen.failed_until <= 10  # a healthy one first
