"""The agent (``umbra up``): unmodified apps reach dark services and publish their own.

Without root it intercepts on loopback: each service this identity may dial gets a stable
``127.0.0.1`` port, and each service it may bind is hosted by forwarding streams to the
service's host address, with no port open to the network. A local API on an owner-only Unix
socket answers status, ping and whois.

    async with Agent(AgentConfig(identity=Path("me.json"), state_dir=Path("~/.umbra/agent")))
        as agent:
        await agent.wait_stopped()
"""

from umbranet.agent.config import AgentConfig, ConfigError, default_state_dir
from umbranet.agent.daemon import daemonize, read_pid, stop_agent
from umbranet.agent.localapi import AgentApiError, LocalApiClient
from umbranet.agent.runner import Agent, run_agent
from umbranet.agent.whois import Delivery, WhoisTable

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
