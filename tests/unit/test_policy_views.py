"""Filtered views: only the services and peers policy allows; change impact for pushes."""

from __future__ import annotations

from umbranet.policy import (
    CompiledPolicy,
    Inventory,
    PortSet,
    PostureReport,
    Subject,
    affected_identities,
    compile_policy,
)

SERVICES = {"billing": ["payments"], "db": [], "web": ["web"], "secret": []}
IDENTITIES = {
    "alice": [],
    "bob": [],
    "mallory": [],
    "dbhost": ["db"],
    "webhost": ["tag:web"],
    "billhost": ["tag:billing"],
    "vault": ["tag:vault"],
}

BASE = """{
  "groups": {"group:eng": ["alice", "bob"]},
  "tagOwners": {"tag:db": [], "tag:web": [], "tag:billing": [], "tag:vault": []},
  "postures": {"posture:linux": {"os": ["linux"]}},
  "rules": [
    {"action": "dial", "src": ["group:eng"], "dst": ["svc:billing:443", "attr:web"]},
    {"action": "dial", "src": ["alice"], "dst": ["svc:db:5432"], "posture": ["posture:linux"]},
    {"action": "dial", "src": ["bob"], "dst": ["svc:billing:443"], "deny": true},
    {"action": "bind", "src": ["tag:db"], "dst": ["svc:db"]},
    {"action": "bind", "src": ["tag:web"], "dst": ["svc:web"]},
    {"action": "bind", "src": ["tag:billing"], "dst": ["svc:billing"]},
    {"action": "bind", "src": ["tag:vault"], "dst": ["svc:secret"]},
  ],
  "http": [{"src": ["alice"], "dst": ["svc:web"], "methods": ["GET"]}],
}"""


def _setup() -> tuple[Inventory, CompiledPolicy]:
    inventory = Inventory(SERVICES, IDENTITIES)
    return inventory, compile_policy(BASE, inventory)


def test_dialer_sees_only_its_services_and_their_hosts() -> None:
    inventory, policy = _setup()
    alice = inventory.identity("alice")
    assert alice is not None
    view = policy.view(alice)
    assert set(view.services) == {"billing", "web"}  # db needs posture, secret is not hers
    assert view.services["billing"].ports == {"dial": PortSet.parse("443")}
    assert view.services["web"].actions == {"dial"}
    assert view.peers == {"billhost", "webhost"}
    assert view.http == {}
    linux = policy.view(alice, posture=PostureReport(os="linux"))
    assert set(linux.services) == {"billing", "web", "db"}
    assert linux.peers == {"billhost", "webhost", "dbhost"}


def test_a_deny_removes_the_service_and_the_peer() -> None:
    inventory, policy = _setup()
    bob = inventory.identity("bob")
    assert bob is not None
    view = policy.view(bob)
    assert set(view.services) == {"web"}
    assert view.peers == {"webhost"}


def test_host_sees_its_dialers_and_its_http_rules() -> None:
    inventory, policy = _setup()
    webhost = inventory.identity("webhost")
    billhost = inventory.identity("billhost")
    dbhost = inventory.identity("dbhost")
    assert webhost and billhost and dbhost
    web = policy.view(webhost)
    assert web.services["web"].ports == {"bind": PortSet.parse("*")}
    assert web.peers == {"alice", "bob"}
    assert set(web.http) == {"web"}
    # bob is denied billing, so the billing host never receives bob's key
    assert policy.view(billhost).peers == {"alice"}
    # peers are listed whatever their posture (tickets check it)
    assert policy.view(dbhost).peers == {"alice"}


def test_outsider_sees_nothing() -> None:
    _, policy = _setup()
    view = policy.view(Subject("mallory"))
    assert view.services == {}
    assert view.peers == frozenset()
    assert view.to_json() == {"subject": "mallory", "services": [], "peers": [], "http": {}}


def test_inventory_changes_reach_cached_peers() -> None:
    inventory, policy = _setup()
    alice = inventory.identity("alice")
    assert alice is not None
    assert policy.view(alice).peers == {"billhost", "webhost"}
    inventory.put_identity("webhost2", ["web"])
    assert policy.view(alice).peers == {"billhost", "webhost", "webhost2"}
    inventory.remove_identity("webhost")
    assert policy.view(alice).peers == {"billhost", "webhost2"}


def test_view_json_is_sorted_and_complete() -> None:
    inventory, policy = _setup()
    webhost = inventory.identity("webhost")
    assert webhost is not None
    data = policy.view(webhost).to_json()
    assert data["services"] == [{"name": "web", "actions": ["bind"], "ports": {"bind": "*"}}]
    assert data["peers"] == ["alice", "bob"]
    assert data["http"]["web"]["rules"][0]["names"] == ["alice"]


def test_affected_by_a_removed_rule() -> None:
    inventory, old = _setup()
    new = compile_policy(
        BASE.replace('"svc:billing:443", "attr:web"', '"svc:billing:443"'), inventory
    )
    affected = affected_identities(old, new, inventory)
    # the rule's subjects, plus the hosts of the services it named (old and new)
    assert affected == {"alice", "bob", "billhost", "webhost"}


def test_affected_by_a_group_change() -> None:
    inventory, old = _setup()
    new = compile_policy(BASE.replace('["alice", "bob"]', '["alice", "bob", "mallory"]'), inventory)
    affected = affected_identities(old, new, inventory)
    assert {"mallory", "billhost", "webhost"} <= affected
    assert "vault" not in affected and "dbhost" not in affected


def test_reordering_rules_affects_nobody() -> None:
    inventory, old = _setup()
    lines = BASE.split("\n")
    rules = lines[5:12]
    reordered = "\n".join(lines[:5] + rules[::-1] + lines[12:])
    new = compile_policy(reordered, inventory)
    assert affected_identities(old, new, inventory) == frozenset()
