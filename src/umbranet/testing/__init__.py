"""Test support that is first-class code: an in-process network authority and control plane,
a simulated network in virtual time, and one bounded wait for real-time tests."""

from umbranet.testing.network import LocalControlPlane, LocalNetwork, ServiceRule
from umbranet.testing.simnet import SimNet, SimTimeout
from umbranet.testing.waiting import eventually

__all__ = ["LocalControlPlane", "LocalNetwork", "ServiceRule", "SimNet", "SimTimeout", "eventually"]
