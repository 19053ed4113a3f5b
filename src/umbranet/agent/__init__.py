"""The agent (``umbra up``): unmodified apps reach dark services and publish their own.

Without root it intercepts on loopback: each service this identity may dial gets a stable
``127.0.0.1`` port, and each service it may bind is hosted by forwarding streams to the
service's host address, with no port open to the network. A local API on an owner-only Unix
socket answers status, ping and whois.

    async with Agent(AgentConfig(identity=Path("me.json"), state_dir=Path("~/.umbra/agent")))
        as agent:
        await agent.wait_stopped()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from umbranet.agent.config import AgentConfig, ConfigError, default_state_dir
    from umbranet.agent.daemon import daemonize, read_pid, stop_agent
    from umbranet.agent.localapi import AgentApiError, LocalApiClient
    from umbranet.agent.runner import Agent, run_agent
    from umbranet.agent.whois import Delivery, WhoisTable

# Exported names load their module on first use: `umbra status` talks to the local API and
# must not pay for the Workload API's grpc, which importing the runner would load.
_HOMES = {
    "AgentConfig": "config",
    "ConfigError": "config",
    "default_state_dir": "config",
    "daemonize": "daemon",
    "read_pid": "daemon",
    "stop_agent": "daemon",
    "AgentApiError": "localapi",
    "LocalApiClient": "localapi",
    "Agent": "runner",
    "run_agent": "runner",
    "Delivery": "whois",
    "WhoisTable": "whois",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


__all__ = [
    "Agent",
    "AgentApiError",
    "AgentConfig",
    "ConfigError",
    "Delivery",
    "LocalApiClient",
    "WhoisTable",
    "daemonize",
    "default_state_dir",
    "read_pid",
    "run_agent",
    "stop_agent",
]
