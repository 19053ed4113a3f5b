"""The router's re-check bookkeeping (`router.recheck`): dedupe, chunks, fail closed, scope."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from umbranet.router.recheck import GrantKey, RecheckRound
from umbranet.router.runner import event_identities
from umbranet.wire import ErrorCode

IDS = [f"spiffe://t.umbra/device/d{i}" for i in range(4)]


def _grants(n: int, services: int = 50) -> list[tuple[str, str, str, int]]:
    """`n` distinct grants: identity i // services, service i % services."""
    return [
        (f"spiffe://t.umbra/device/d{i // services}", f"s{i % services}", "dial", i)
        for i in range(n)
    ]


def test_duplicates_are_sent_once_and_the_answer_closes_every_copy() -> None:
    grants = [(IDS[0], "db", "dial", h) for h in range(2000)] + [(IDS[1], "db", "dial", -1)]
    rnd = RecheckRound(7, grants, now=0.0)
    chunk = rnd.poll_request(0.0)
    assert chunk is not None
    assert chunk.keys == (GrantKey(IDS[0], "db", "dial"), GrantKey(IDS[1], "db", "dial"))
    rnd.handle_answer(chunk.id, {0: "identity d0 is disabled"})
    assert rnd.poll_request(0.0) is None and rnd.done
    closed = rnd.poll_closures()
    assert sorted(c.handle for c in closed) == list(range(2000))
    assert {c.code for c in closed} == {ErrorCode.REVOKED}
    assert rnd.statistics()["duplicates"] == 1999


def test_ten_thousand_grants_go_out_in_bounded_chunks() -> None:
    rnd = RecheckRound(1, _grants(10_000), now=0.0)
    sizes = []
    while (chunk := rnd.poll_request(0.0)) is not None:
        sizes.append(len(chunk.keys))
        rnd.handle_answer(chunk.id, {})
    assert sum(sizes) == 10_000
    assert max(sizes) <= 256
    assert rnd.poll_closures() == []


def test_a_chunk_failing_twice_closes_its_grants() -> None:
    rnd = RecheckRound(3, _grants(10, services=1), now=0.0)
    first = rnd.poll_request(0.0)
    assert first is not None
    rnd.handle_failure(first.id, "413 body_too_large")
    again = rnd.poll_request(0.1)
    assert again is not None and again.id == first.id  # retried once
    rnd.handle_failure(again.id, "413 body_too_large")
    assert rnd.poll_request(0.2) is None and rnd.done
    closed = rnd.poll_closures()
    assert sorted(c.handle for c in closed) == list(range(10))
    assert {c.code for c in closed} == {ErrorCode.RECHECK_FAILED}
    assert "could not be re-checked after epoch 3" in closed[0].reason
    assert rnd.statistics()["failed_closed"] == 10


def test_past_the_deadline_every_unanswered_chunk_fails_closed() -> None:
    rnd = RecheckRound(3, _grants(600), now=100.0, deadline=10.0)
    chunk = rnd.poll_request(100.0)
    assert chunk is not None
    rnd.handle_answer(chunk.id, {})
    assert rnd.poll_request(111.0) is None
    closed = rnd.poll_closures()
    assert len(closed) == 600 - 256
    assert {c.code for c in closed} == {ErrorCode.RECHECK_FAILED}


def test_an_answer_cannot_close_grants_outside_its_chunk() -> None:
    rnd = RecheckRound(3, _grants(3), now=0.0)
    chunk = rnd.poll_request(0.0)
    assert chunk is not None
    rnd.handle_answer(chunk.id, {-1: "x", 3: "x", 99: "x"})
    rnd.handle_answer(chunk.id, {0: "late duplicate answer"})  # already answered
    rnd.handle_failure(chunk.id, "late failure")
    rnd.handle_answer(42, {0: "no such chunk"})
    assert rnd.poll_closures() == []


def test_an_event_naming_identities_rechecks_only_theirs() -> None:
    grants = [(IDS[i % 4], "db", "dial", i) for i in range(40)]
    rnd = RecheckRound(9, grants, now=0.0, only=[IDS[2]])
    chunk = rnd.poll_request(0.0)
    assert chunk is not None and chunk.keys == (GrantKey(IDS[2], "db", "dial"),)
    assert rnd.statistics()["skipped"] == 30


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.booleans()), max_size=80),
    st.integers(1, 7),
    st.lists(st.sampled_from(["ok", "deny", "fail"]), min_size=1, max_size=40),
)
def test_every_handle_is_closed_exactly_when_its_grant_was_denied_or_unverifiable(
    raw: list[tuple[int, int, bool]], chunk_size: int, script: list[str]
) -> None:
    grants = [(IDS[i % 4], f"s{s}", "dial" if d else "bind", h) for h, (i, s, d) in enumerate(raw)]
    rnd = RecheckRound(1, grants, now=0.0, chunk_size=chunk_size)
    must_close: set[GrantKey] = set()
    step = 0
    while (chunk := rnd.poll_request(float(step))) is not None and step < 1000:
        assert len(chunk.keys) <= chunk_size
        action = script[step % len(script)]
        step += 1
        if action == "fail":
            rnd.handle_failure(chunk.id, "boom")
            continue
        denied = {0: "no"} if action == "deny" else {}
        must_close |= {chunk.keys[i] for i in denied}
        rnd.handle_answer(chunk.id, denied)
    assert rnd.done
    closed = rnd.poll_closures()
    by_handle = [c.handle for c in closed]
    assert len(by_handle) == len(set(by_handle)), "a handle was closed twice"
    failed = {c.handle for c in closed if c.code is ErrorCode.RECHECK_FAILED}
    revoked = {c.handle for c in closed if c.code is ErrorCode.REVOKED}
    for identity, service, action, handle in grants:
        key = GrantKey(identity, service, action)
        if key in must_close:
            assert handle in revoked
        elif handle not in failed:
            assert handle not in revoked


def test_only_a_well_formed_identity_list_narrows_a_recheck() -> None:
    assert event_identities({"identities": [IDS[0]]}) == [IDS[0]]
    for bad in ([], ["not-spiffe"], [IDS[0], 3], "spiffe://x/y", [IDS[0]] * 65, None):
        assert event_identities({"identities": bad}) is None, bad
