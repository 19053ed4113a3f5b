"""The relay router(s) of a pair are chosen by measured latency, not by list order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umbranet.proto.relay_choice import RelayChoice, choose_relay, rank_relays

ROUTERS = ["r-eu", "r-us", "r-asia"]


def test_one_router_near_both_beats_the_first_listed() -> None:
    mine = {"r-asia": 180.0, "r-eu": 12.0, "r-us": 90.0}
    theirs = {"r-asia": 200.0, "r-eu": 15.0, "r-us": 80.0}
    assert choose_relay(mine, theirs, {}) == RelayChoice("r-eu", "r-eu", 27.0)


def test_two_routers_over_the_mesh_when_that_is_shorter() -> None:
    """Devices on two continents: each uses its near router, the mesh carries the middle."""
    mine = {"r-eu": 10.0, "r-us": 100.0}
    theirs = {"r-eu": 110.0, "r-us": 8.0}
    mesh = {("r-eu", "r-us"): 75.0}
    choice = choose_relay(mine, theirs, mesh)
    assert choice == RelayChoice("r-eu", "r-us", 93.0)
    assert choice is not None and not choice.one_router


def test_unlinked_or_unmeasured_routers_are_never_chosen() -> None:
    mine = {"r-eu": 10.0, "r-us": None}
    theirs = {"r-us": 8.0, "r-eu": 300.0}
    # r-eu and r-us are not linked in the mesh: only the shared r-eu is a path.
    assert choose_relay(mine, theirs, {}) == RelayChoice("r-eu", "r-eu", 310.0)
    assert choose_relay({"r-eu": None}, theirs, {}) is None
    assert choose_relay({"r-x": 1.0}, {"r-y": 1.0}, {}) is None


def test_rank_relays_puts_the_fastest_measured_first() -> None:
    order = rank_relays(["r-a", "r-b", "r-c", "r-d"], {"r-b": 40.0, "r-c": 5.0, "r-a": None})
    assert order == ["r-c", "r-b", "r-a", "r-d"]


rtts = st.dictionaries(
    st.sampled_from(ROUTERS), st.one_of(st.none(), st.floats(0, 500, allow_nan=False)), max_size=3
)
meshes = st.dictionaries(
    st.tuples(st.sampled_from(ROUTERS), st.sampled_from(ROUTERS)),
    st.floats(0, 300, allow_nan=False),
    max_size=6,
)


@given(rtts, rtts, meshes)
def test_choice_is_the_least_known_path_and_the_same_from_both_ends(
    mine: dict[str, float | None],
    theirs: dict[str, float | None],
    mesh: dict[tuple[str, str], float],
) -> None:
    def between(a: str, b: str) -> float | None:
        if a == b:
            return 0.0
        found = [f for f in (mesh.get((a, b)), mesh.get((b, a))) if f is not None]
        return min(found) if found else None

    costs = [
        (m + w + t, a, b)
        for a, m in mine.items()
        for b, t in theirs.items()
        if m is not None and t is not None and (w := between(a, b)) is not None
    ]
    choice = choose_relay(mine, theirs, mesh)
    if not costs:
        assert choice is None
        return
    assert choice is not None
    # Sums of the same three figures in another order differ in the last bit.
    assert choice.cost_ms == pytest.approx(min(c for c, _, _ in costs), rel=1e-9)
    back = choose_relay(theirs, mine, mesh)
    assert back is not None and back.cost_ms == pytest.approx(choice.cost_ms, rel=1e-9)
