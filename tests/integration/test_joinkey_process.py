"""Join keys end to end against a real controller process over real TLS: the admin makes a
key, two replicas enroll with it through `umbra enroll --join-key` (pinned to the CA the key
names) and get identities of their own that can talk to the controller."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import free_port
from umbranet.client.controller import ControllerClient
from umbranet.pki import IdentityFile
from umbranet.quickstart import Quickstart

runner = CliRunner()


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Quickstart]:
    net = Quickstart(
        tmp_path / "net", router_port=free_port(), controller_port=free_port(), say=lambda _m: None
    )
    try:
        net.start_core()
        yield net
    finally:
        net.stop()


def _umbra(*args: str) -> dict[str, object]:
    from umbranet.cli.main import app

    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    value: dict[str, object] = json.loads(result.output)
    return value


def test_two_replicas_enroll_with_one_join_key(network: Quickstart, tmp_path: Path) -> None:
    home = str(network.root)
    key_file = tmp_path / "web.key"
    _umbra("--home", home, "joinkey", "create", "--reusable", "--attr", "web", "-o", str(key_file))
    names = []
    for replica in ("a", "b"):
        out = tmp_path / f"{replica}.json"
        enrolled = _umbra(
            "enroll", "--join-key", str(key_file), "--name-prefix", "web-", "-o", str(out)
        )
        names.append(str(enrolled["name"]))

        async def me(path: Path = out) -> list[str]:
            async with ControllerClient(IdentityFile.load(path)) as client:
                return list((await client.me()).attributes)

        assert asyncio.run(me()) == ["web"]
    assert len(set(names)) == 2 and all(n.startswith("web-") for n in names)
