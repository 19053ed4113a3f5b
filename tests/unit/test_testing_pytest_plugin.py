"""The pytest plugin users load by installing umbranet: their test dials and hosts through a
real router and is refused what the network's rules refuse."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import asyncio

import pytest

from umbranet.sdk import DialError


def test_echo_through_the_overlay(umbra_network):
    umbra_network.service("echo", dial=("clients",), bind=("servers",))

    async def main():
        async with umbra_network.context("srv", "servers") as server, \\
                   umbra_network.context("cli", "clients") as client:
            async with server.listen("echo") as listener:  # bound once entered
                async def serve():
                    async for stream in listener:
                        data = await stream.read(100)
                        stream.write(data.upper())
                        await stream.drain()
                        stream.write_eof()
                        return stream.peer.name

                task = asyncio.ensure_future(serve())
                stream = await asyncio.wait_for(client.dial("echo"), 20)
                stream.write(b"hello")
                await stream.drain()
                assert await asyncio.wait_for(stream.read(100), 20) == b"HELLO"
                assert await asyncio.wait_for(task, 20) == "cli"

    asyncio.run(main())


def test_rules_still_apply(umbra_network):
    umbra_network.service("echo", dial=("clients",), bind=("servers",))

    async def main():
        async with umbra_network.context("eve", "guests") as eve:
            with pytest.raises(DialError):
                await asyncio.wait_for(eve.dial("echo"), 20)

    asyncio.run(main())
"""


def _plugin_args() -> list[str]:
    """Load the plugin by its module, with the entry point blocked: whether the child
    pytest also finds the entry point depends on the install it sees (a stale editable
    install, or an egg-info left in src/ by another build), and loading the module twice
    under two names is an error."""
    return ["-p", "no:umbranet", "-p", "umbranet.testing.pytest_plugin"]


def test_a_users_test_gets_a_working_network(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(*_plugin_args(), "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_the_plugin_is_registered_as_an_entry_point() -> None:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    points = tomllib.loads(pyproject.read_text())["project"]["entry-points"]["pytest11"]
    assert points == {"umbranet": "umbranet.testing.pytest_plugin"}
