"""Which routers the agent keeps links to (`agent/routerlinks.choose`): the best few by
measured RTT, the controller's order for routers never measured, and a linked router kept
against one that is only a little better (no flapping between near-equal routers)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from umbranet.agent.routerlinks import choose

ROUTERS = ["r1", "r2", "r3", "r4", "r5"]


def test_the_lowest_rtts_are_chosen_best_first() -> None:
    rtt = {"r1": 5.0, "r2": 1.0, "r3": 3.0, "r4": 2.0, "r5": 4.0}
    assert choose(ROUTERS, rtt.get, set(), 3) == ["r2", "r4", "r3"]


def test_unmeasured_routers_come_after_measured_ones_in_the_controllers_order() -> None:
    rtt = {"r4": 9.0}
    assert choose(ROUTERS, rtt.get, set(), 3) == ["r4", "r1", "r2"]
    assert choose(ROUTERS, lambda _a: None, set(), 2) == ["r1", "r2"]


def test_a_linked_router_keeps_its_place_against_a_slightly_better_one() -> None:
    rtt = {"r1": 1.1, "r2": 1.0}
    assert choose(["r1", "r2"], rtt.get, {"r1"}, 1) == ["r1"]  # 10% better: stay
    rtt["r2"] = 0.4
    assert choose(["r1", "r2"], rtt.get, {"r1"}, 1) == ["r2"]  # far better: move


@given(
    st.dictionaries(st.sampled_from(ROUTERS), st.floats(0.0, 500.0), max_size=5),
    st.sets(st.sampled_from(ROUTERS)),
    st.integers(0, 6),
)
def test_the_choice_is_keep_distinct_candidates(
    rtt: dict[str, float], linked: set[str], keep: int
) -> None:
    chosen = choose(ROUTERS, rtt.get, linked, keep)
    assert len(chosen) == min(keep, len(ROUTERS)) == len(set(chosen))
    assert set(chosen) <= set(ROUTERS)
    # A measured router is never passed over for an unmeasured one.
    if any(a not in rtt for a in chosen):
        assert set(rtt) <= set(chosen)
