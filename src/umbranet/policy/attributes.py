"""Attribute-based access: the interim policy until the HuJSON policy engine lands.

Rule: an identity may *dial* a service when it holds at least one of the service's dial
attributes, and may *bind* (host) it when it holds one of its bind attributes. A service with
no attributes for an action grants that action to nobody (deny by default).

Pure code: no IO, no clock. The controller calls `decide_access` in exactly one place
(`umbranet.controller.authz`), so the policy engine can replace this module there.
"""

from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

from umbranet.policy.verdict import Verdict

__all__ = ["ACTIONS", "Action", "ServiceGrants", "decide_access"]

Action = Literal["dial", "bind"]
ACTIONS: tuple[Action, ...] = ("dial", "bind")


class ServiceGrants(Protocol):
    """What the decision needs to know about a service (a store row or a plain record)."""

    @property
    def name(self) -> str: ...

    @property
    def dial_attributes(self) -> Sequence[str]: ...

    @property
    def bind_attributes(self) -> Sequence[str]: ...


def decide_access(
    identity_attributes: Iterable[str], service: ServiceGrants, action: str
) -> Verdict:
    """May an identity holding `identity_attributes` perform `action` on `service`?"""
    if action == "dial":
        granting = list(service.dial_attributes)
    elif action == "bind":
        granting = list(service.bind_attributes)
    else:
        return Verdict.deny(f"unknown action {action!r} (expected dial or bind)")
    held = set(identity_attributes)
    matched = sorted(held.intersection(granting))
    if matched:
        return Verdict.allow(f"attribute {matched[0]!r} grants {action} on {service.name!r}")
    if not granting:
        return Verdict.deny(f"service {service.name!r} grants {action} to no attribute")
    wanted = ", ".join(repr(a) for a in sorted(granting))
    return Verdict.deny(f"{action} on {service.name!r} needs one of the attributes {wanted}")
