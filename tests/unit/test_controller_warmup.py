"""A starting replica builds the policy's caches itself, so its first clients find them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controller_harness import Harness, make_harness
from umbranet.controller.service import policy
from umbranet.controller.warmup import warm, warm_in_background

POLICY = '{"rules": [{"action": "dial", "src": ["admin"], "dst": ["svc:db"]}]}'


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def _cold() -> None:
    policy._compiled.clear()
    policy._inventories.clear()


def test_warming_compiles_the_policy_and_builds_the_inventory(h: Harness) -> None:
    admin = h.client(h.admin)
    assert admin.post("/v1/services", json={"name": "db"}).status_code == 201
    assert admin.put("/v1/policy", json={"text": POLICY}).status_code == 200
    _cold()
    context = h.app.state.umbra
    warm(context)
    assert len(policy._compiled) == 1 and len(policy._inventories) == 1
    misses = policy._inventories.misses
    with context.transaction() as store:
        policy.shared_inventory(store, context.events.epoch)
    assert policy._inventories.misses == misses  # the first client's view finds it


def test_without_a_policy_there_is_nothing_to_warm(h: Harness) -> None:
    _cold()
    thread = warm_in_background(h.app.state.umbra)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(policy._compiled) == 0 and len(policy._inventories) == 0
