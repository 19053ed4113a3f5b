"""Test support that is first-class code: an in-process network authority and control plane."""

from umbranet.testing.network import LocalControlPlane, LocalNetwork, ServiceRule

__all__ = ["LocalControlPlane", "LocalNetwork", "ServiceRule"]
