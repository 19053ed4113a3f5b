"""Use cases for the policy document: save (validate, test, keep), test, roll back, explain.

Every accepted version is kept in the store with who saved it and when; the newest is in
force. A document that does not parse, names unknown things or fails its own tests is refused
with its line and column, and the previous version stays in force (nothing is written).

Compiling is not free, so compiled policies are cached by the document's hash; the cache is
only a speed-up (any process can rebuild it from the store), and it is keyed by content, so
two controllers in one process (tests) never see each other's policy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from umbranet.cache import BoundedCache
from umbranet.controller.authz import ActivePolicy, service_ref
from umbranet.controller.service.errors import BadRequest, NotFound
from umbranet.controller.service.posture import report_of
from umbranet.controller.store import Identity, PolicyVersion, Service, Store
from umbranet.policy import (
    CompiledPolicy,
    Inventory,
    PolicyError,
    Subject,
    compile_policy,
    decide_access,
)

__all__ = [
    "PolicyInfo",
    "active_policy",
    "explain",
    "get_policy",
    "history",
    "inventory_of",
    "rollback",
    "set_policy",
    "test_policy",
]

_CACHE_SIZE = 16
# Module-level because compiled policies are keyed by content and inventories by database
# URL, so two controllers in one process (tests) cannot see each other's entries.
_compiled: BoundedCache[str, CompiledPolicy] = BoundedCache(_CACHE_SIZE)
_inventories: BoundedCache[tuple[str | int, ...], Inventory] = BoundedCache(_CACHE_SIZE)


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """One stored version, as the API shows it."""

    version: int
    text: str
    created_at: datetime
    created_by: str
    comment: str | None


def inventory_of(store: Store) -> Inventory:
    """The network as the policy compiler sees it: services with the union of their dial and
    bind attributes, identities (enabled ones only) with their attributes as tags."""
    inventory = Inventory()
    for service in store.services():
        ref = service_ref(service)
        inventory.put_service(ref.name, ref.attributes)
    for identity in store.identities():
        if identity.enabled:
            inventory.put_identity(identity.name, identity.attributes)
    return inventory


def shared_inventory(store: Store, epoch: int) -> Inventory:
    """`inventory_of`, reused while the network has not changed (for views).

    Rebuilding the inventory also rebuilds the policy's peer caches (keyed by inventory), which
    costs seconds at 100,000 identities; views are asked for often and the network changes
    rarely. The key covers everything the inventory holds that can change: the fingerprint
    moves when identities or services are added or identities enabled or disabled (attributes
    are fixed at creation), and the revocation ``epoch`` moves when a service is deleted (so a
    new service reusing its row id is never mistaken for it).
    """
    url: str = str(store.session.get_bind().engine.url)
    key: tuple[str | int, ...] = (url, epoch, *store.inventory_fingerprint())
    return _inventories.fetch(key, lambda: inventory_of(store))


def test_policy(store: Store, text: str) -> CompiledPolicy:
    """Compile ``text`` against the network and run its tests; raise `BadRequest` if refused.

    Codes: ``policy_tests_failed`` (its own tests fail) or ``policy_invalid`` (does not parse,
    bad shape, unknown names); the message carries the line/column and the engine's code.
    """
    try:
        return compile_policy(text, inventory_of(store))
    except PolicyError as exc:
        code = "policy_tests_failed" if exc.code == "policy_tests_failed" else "policy_invalid"
        message = str(exc)
        if len(exc.details) > 1:
            message += "; all failures: " + " | ".join(exc.details)
        raise BadRequest(code, message) from exc


def set_policy(
    store: Store, text: str, *, actor: str, now: datetime, comment: str | None = None
) -> PolicyInfo:
    """Validate, test and store ``text`` as the new version in force; audited (before/after)."""
    compiled = test_policy(store, text)
    before = store.policy_current()
    row = PolicyVersion(text=text, created_at=now, created_by=actor, comment=comment)
    store.add(row)
    _remember(text, compiled)
    store.audit(
        now,
        actor,
        "policy.set",
        "policy",
        {
            "before": before.version if before is not None else None,
            "after": row.version,
            "comment": comment,
        },
    )
    return _info(row)


def rollback(store: Store, version: int, *, actor: str, now: datetime) -> PolicyInfo:
    """Put an old version's text back in force, as a new version (history only grows)."""
    old = store.policy_version(version)
    if old is None:
        raise NotFound("unknown_policy_version", f"no policy version {version}")
    return set_policy(store, old.text, actor=actor, now=now, comment=f"rollback to {version}")


def get_policy(store: Store) -> PolicyInfo | None:
    row = store.policy_current()
    return _info(row) if row is not None else None


def history(store: Store, limit: int = 100) -> list[PolicyInfo]:
    """Stored versions, newest first."""
    return [_info(row) for row in store.policy_history(limit)]


def active_policy(store: Store) -> ActivePolicy | None:
    """The version in force, compiled (cached), or None when no policy was ever saved."""
    row = store.policy_current()
    if row is None:
        return None
    compiled = _cached(row.text)
    if compiled is None:
        try:
            compiled = compile_policy(row.text, inventory_of(store), run_tests=False)
        except PolicyError as exc:
            return ActivePolicy(row.version, None, str(exc))
        _remember(row.text, compiled)
    return ActivePolicy(row.version, compiled)


def explain(
    store: Store,
    identity: str,
    service: str,
    *,
    action: str = "dial",
    port: int | None = None,
    method: str | None = None,
    path: str | None = None,
    now: datetime,
) -> dict[str, Any]:
    """Why ``identity`` may or may not ``action`` ``service``: the verdict and every rule.

    With ``method`` and ``path``, the HTTP rules of the service are explained instead.
    """
    subject_row = store.identity_by_name(identity)
    if subject_row is None:
        raise NotFound("unknown_identity", f"no identity named {identity!r}")
    service_row = store.service_by_name(service)
    if service_row is None:
        raise NotFound("unknown_service", f"no service named {service!r}")
    active = active_policy(store)
    if active is None:
        return _explain_without_policy(subject_row, service_row, action)
    if active.compiled is None:
        raise BadRequest("policy_invalid", f"policy version {active.version}: {active.error}")
    subject = Subject.of(subject_row.name, subject_row.attributes)
    ref = service_ref(service_row)
    if method is not None and path is not None:
        report = active.compiled.explain_http(subject, ref, method, path)
    else:
        posture = report_of(subject_row)  # the endpoint's newest report, as tickets see it
        report = active.compiled.explain(subject, ref, action, port, posture=posture, now=now)
    out = report.to_dict()
    out["version"] = active.version
    out["rendered"] = report.render()
    return out


def _explain_without_policy(identity: Identity, service: Service, action: str) -> dict[str, Any]:
    """Before any policy is saved, access follows the services' attributes: explain that
    rule (the same one tickets use), so `policy explain` answers from the first minute."""
    verdict = decide_access(identity.attributes, service, action)
    word = "allowed" if verdict.allowed else "denied"
    held = ", ".join(identity.attributes) or "none"
    return {
        "allowed": verdict.allowed,
        "reason": verdict.reason,
        "request": f"{action} {service.name}",
        "subject": {"name": identity.name, "tags": list(identity.attributes), "groups": []},
        "service": {"name": service.name, "attributes": [*service.dial_attributes]},
        "rules": [],
        "postures": [],
        "unrelated_rules": 0,
        "version": None,
        "rendered": (
            f"{identity.name} -> {action} {service.name}: {word}\n"
            f"  no policy saved yet: the service's --dial-attr/--bind-attr decide "
            f"({identity.name} holds: {held})\n"
            f"  {verdict.reason}"
        ),
    }


def _info(row: PolicyVersion) -> PolicyInfo:
    return PolicyInfo(row.version, row.text, row.created_at, row.created_by, row.comment)


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _cached(text: str) -> CompiledPolicy | None:
    return _compiled.get(_key(text))


def _remember(text: str, compiled: CompiledPolicy) -> None:
    _compiled.put(_key(text), compiled)
