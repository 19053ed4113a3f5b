"""Compile a policy document: parse, type-check, check every reference, run its tests.

`compile_policy` is the controller's one entry point for ``policy set`` and ``policy test``:
it either returns a `CompiledPolicy` ready to decide, or raises a `PolicyError` with the code,
the line and column and the reason, and the controller keeps the previous version in force.

Stages, each refusing at its first fault:

1. `hujson.parse` (``policy_syntax``);
2. `schema.build_policy` (shapes, selector/port/posture syntax);
3. references: groups, tags (declared in ``tagOwners``), postures, services and service
   attributes (from the `Inventory`) must exist; nested groups must not form a cycle;
4. the document's ``tests`` (``policy_tests_failed``, every failure in ``details``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

from umbranet.policy import hujson
from umbranet.policy.engine import CompiledPolicy, ResolvedGroup
from umbranet.policy.errors import PolicyError
from umbranet.policy.inventory import Inventory
from umbranet.policy.model import DstSelector, Policy, SrcSelector
from umbranet.policy.schema import build_policy

__all__ = ["compile_policy", "resolve_groups"]


def compile_policy(
    text: str, known: Inventory | None = None, *, run_tests: bool = True
) -> CompiledPolicy:
    """Parse, validate and (unless ``run_tests`` is False) test a policy document.

    ``known`` holds the network's services (names and attributes) and identities (names and
    tags); rules may only name services and attributes it contains, and tests use its tags.
    """
    inventory = known if known is not None else Inventory()
    document = hujson.parse(text)
    policy = build_policy(document)
    check_references(policy, inventory)
    if known is not None:
        extra = reference_warnings(policy, known)
        if extra:
            policy = dataclasses.replace(policy, warnings=(*policy.warnings, *extra))
    groups = resolve_groups(policy)
    compiled = CompiledPolicy(policy, groups, text, inventory)
    if run_tests:
        failures = compiled.run_tests()
        if failures:
            first = failures[0]
            count = f"{len(failures)} policy tests fail" if len(failures) > 1 else "a test fails"
            raise PolicyError(
                "policy_tests_failed",
                f"{count}; first: {first.summary}",
                first.line,
                first.column,
                tuple(f.summary for f in failures),
            )
    return compiled


def check_references(policy: Policy, known: Inventory) -> None:
    """Refuse names that point nowhere: groups, tags, postures, services, attributes."""
    for owner_list in policy.tag_owners.values():
        for selector in owner_list:
            _check_src(policy, selector)
    for members in policy.groups.values():
        for selector in members:
            _check_src(policy, selector)
    for rule in policy.rules:
        for selector in rule.src:
            _check_src(policy, selector)
        for target in rule.dst:
            _check_dst(target, known)
        for name in rule.postures:
            if name not in policy.postures:
                line, column = rule.line, rule.column
                reason = f"{rule.label} needs {name}, which is not defined in postures"
                raise PolicyError("policy_unknown_posture", reason, line, column)
    for http_rule in policy.http:
        for selector in http_rule.src:
            _check_src(policy, selector)
        for target in http_rule.dst:
            _check_dst(target, known)
    for net_rule in policy.network.rules:
        for selector in net_rule.src:
            _check_src(policy, selector)
        for net_dst in net_rule.dst:
            if net_dst.peer is not None:
                _check_src(policy, net_dst.peer)
    approvers = policy.network.auto_approvers
    for selector in (*approvers.exit_node, *(s for _, who in approvers.routes for s in who)):
        _check_src(policy, selector)
    for test in policy.tests:
        for tag in sorted(test.tags or ()):
            if tag not in policy.tag_owners:
                reason = f"tests[{test.index}] uses tag:{tag}, which is not declared in tagOwners"
                raise PolicyError("policy_unknown_tag", reason, test.line, test.column)
        for case in (*test.accept, *test.deny):
            if case.packet is None and known.service(case.service) is None:
                reason = f"test entry {case.text!r} names unknown service {case.service!r}"
                raise PolicyError("policy_unknown_service", reason, case.line, case.column)


def reference_warnings(policy: Policy, known: Inventory) -> list[str]:
    """Names that are valid but match nobody yet: an identity name no identity has, a tag no
    identity carries. Not refused (the identity may be created next), but said, since a typo
    here silently grants or denies nothing."""
    names = known.identity_names()
    selectors = [
        *(s for owners in policy.tag_owners.values() for s in owners),
        *(s for members in policy.groups.values() for s in members),
        *(s for rule in policy.rules for s in rule.src),
        *(s for rule in policy.http for s in rule.src),
        *(s for rule in policy.network.rules for s in rule.src),
    ]
    warnings: list[str] = []
    seen: set[tuple[str, str]] = set()
    for selector in selectors:
        key = (selector.kind, selector.value)
        if key in seen:
            continue
        seen.add(key)
        where = f" (line {selector.line})" if selector.line is not None else ""
        if selector.kind == "name" and selector.value not in names:
            warnings.append(f"{selector.value!r}{where} is not the name of any identity (yet)")
        elif selector.kind == "tag" and not any(
            True for _ in known.identities_with(selector.value)
        ):
            warnings.append(f"tag:{selector.value}{where} is carried by no identity (yet)")
    return warnings


def resolve_groups(policy: Policy) -> dict[str, ResolvedGroup]:
    """Expand nested groups into names and tags; refuse a group that includes itself."""
    done: dict[str, ResolvedGroup] = {}
    for root in policy.groups:
        if root in done:
            continue
        # Iterative depth-first walk, so a long chain of nested groups cannot overflow the stack.
        stack: list[tuple[str, Iterator[SrcSelector]]] = [(root, iter(policy.groups[root]))]
        on_stack = [root]
        while stack:
            group, members = stack[-1]
            child = next((m for m in members if m.kind == "group" and m.value not in done), None)
            if child is not None:
                if child.value in on_stack:
                    cycle = " -> ".join([*on_stack[on_stack.index(child.value) :], child.value])
                    reason = f"{child.value} includes itself: {cycle}"
                    raise PolicyError("policy_group_cycle", reason, child.line, child.column)
                stack.append((child.value, iter(policy.groups[child.value])))
                on_stack.append(child.value)
                continue
            done[group] = _flatten(policy.groups[group], done)
            stack.pop()
            on_stack.pop()
    return done


def _flatten(members: tuple[SrcSelector, ...], done: Mapping[str, ResolvedGroup]) -> ResolvedGroup:
    names: set[str] = set()
    tags: set[str] = set()
    for member in members:
        if member.kind == "name":
            names.add(member.value)
        elif member.kind == "tag":
            tags.add(member.value)
        elif member.kind == "group":
            names.update(done[member.value].names)
            tags.update(done[member.value].tags)
    return ResolvedGroup(frozenset(names), frozenset(tags))


def _check_src(policy: Policy, selector: SrcSelector) -> None:
    if selector.kind == "group" and selector.value not in policy.groups:
        reason = f"{selector.value} is not defined in groups"
        raise PolicyError("policy_unknown_group", reason, selector.line, selector.column)
    if selector.kind == "tag" and selector.value not in policy.tag_owners:
        reason = f"tag:{selector.value} is not declared in tagOwners"
        raise PolicyError("policy_unknown_tag", reason, selector.line, selector.column)


def _check_dst(selector: DstSelector, known: Inventory) -> None:
    if selector.kind == "svc" and known.service(selector.value) is None:
        reason = f"no service is named {selector.value!r}"
        raise PolicyError("policy_unknown_service", reason, selector.line, selector.column)
    if selector.kind == "attr" and not known.has_attribute(selector.value):
        reason = f"no service carries the attribute {selector.value!r}"
        raise PolicyError("policy_unknown_attribute", reason, selector.line, selector.column)
