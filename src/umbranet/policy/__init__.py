"""Access policy: decisions as verdicts with reasons. Pure code, no IO and no clock.

Today the rule is attribute-based (`attributes.decide_access`); the HuJSON policy engine will
replace it behind the same `Verdict`.
"""

from umbranet.policy.attributes import ACTIONS, Action, ServiceGrants, decide_access
from umbranet.policy.verdict import Verdict

__all__ = ["ACTIONS", "Action", "ServiceGrants", "Verdict", "decide_access"]
