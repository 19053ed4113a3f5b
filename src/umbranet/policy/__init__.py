"""Access policy: decisions as verdicts with reasons. Pure code, no IO and no clock.

Two engines live here, behind the same `Verdict`:

- the interim attribute rule (`attributes.decide_access`), which the controller calls today;
- the HuJSON policy engine: `compile_policy(text, inventory)` checks a policy document
  (syntax, references, its own tests) and returns a `CompiledPolicy` that decides dial/bind
  and HTTP requests, explains them rule by rule, and computes each identity's filtered view.

Module map: `hujson` (parser with line/column errors), `schema` (document -> typed `model`),
`compile` (references, groups, tests), `engine` (indexed decisions), `explain` (the linear
reference and its report), `views` (per-identity views, change impact), `posture`, `http`
(fragments the hosting endpoint enforces), `pathnorm`, `inventory`, `checks` (policy tests).
"""

from umbranet.policy.attributes import ACTIONS, Action, ServiceGrants, decide_access
from umbranet.policy.checks import TestFailure
from umbranet.policy.compile import compile_policy
from umbranet.policy.engine import CompiledPolicy
from umbranet.policy.errors import PolicyError, PolicyUsageError
from umbranet.policy.explain import Explanation, RuleTrace
from umbranet.policy.http import HttpFragment
from umbranet.policy.hujson import loads as parse_hujson
from umbranet.policy.inventory import Inventory
from umbranet.policy.model import PortSet, ServiceRef, Subject
from umbranet.policy.posture import PostureReport, PostureResult
from umbranet.policy.verdict import Verdict
from umbranet.policy.views import ServiceAccess, View, affected_identities

__all__ = [
    "ACTIONS",
    "Action",
    "CompiledPolicy",
    "Explanation",
    "HttpFragment",
    "Inventory",
    "PolicyError",
    "PolicyUsageError",
    "PortSet",
    "PostureReport",
    "PostureResult",
    "RuleTrace",
    "ServiceAccess",
    "ServiceGrants",
    "ServiceRef",
    "Subject",
    "TestFailure",
    "Verdict",
    "View",
    "affected_identities",
    "compile_policy",
    "decide_access",
    "parse_hujson",
]
