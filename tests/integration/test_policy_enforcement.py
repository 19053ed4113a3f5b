"""Policy enforced end to end with real controller and router processes: HTTP rules at the
hosting endpoint (a real HTTP client gets 403 and the reason; the app never sees the refused
request), posture reported by the endpoint (a failing posture closes the live stream within
the push path and refuses the next dial), and filtered views (an identity sees only what
policy lets it reach)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI, Request

from tests.conftest import echo_forever, free_port
from umbranet.client.controller import ControllerClient
from umbranet.integrations import AsgiServer, UmbraTransport
from umbranet.pki import IdentityFile
from umbranet.quickstart import Quickstart
from umbranet.sdk import Context, DialError, StreamReset

T = TypeVar("T")

SENTRY = "umbra-sentry"  # a process name nothing else on the machine has

POLICY = f"""{{
  "postures": {{"posture:sentry": {{"processRunning": ["{SENTRY}"]}}}},
  "rules": [
    {{"action": "bind", "src": ["web-host"], "dst": ["svc:web"]}},
    {{"action": "dial", "src": ["alice", "bob"], "dst": ["svc:web"]}},
    {{"action": "bind", "src": ["vault-host"], "dst": ["svc:vault"]}},
    {{"action": "dial", "src": ["carol"], "dst": ["svc:vault"], "posture": ["posture:sentry"]}},
    {{"action": "bind", "src": ["web-host"], "dst": ["svc:other"]}},
    {{"action": "dial", "src": ["bob"], "dst": ["svc:other:8080"]}},
  ],
  "http": [
    {{"src": ["alice"], "dst": ["svc:web"], "methods": ["GET"], "paths": ["/public"]}},
    {{"src": ["bob"], "dst": ["svc:web"], "paths": ["/"]}},
  ],
  "tests": [
    {{"src": "alice", "accept": ["svc:web"], "deny": ["svc:vault"]}},
  ],
}}"""


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quickstart]:
    os.environ["UMBRA_POSTURE_REPORT_INTERVAL"] = "0.2"
    net = Quickstart(
        tmp_path_factory.mktemp("enforce"),
        router_port=free_port(),
        controller_port=free_port(),
        say=lambda _m: None,
    )
    try:
        net.start_core()
        for service in ("web", "vault", "other"):
            _run(net.ensure_service(service, [], []))
        for name in ("web-host", "alice", "bob", "vault-host", "carol"):
            _run(net.enroll(name, []))

        async def apply() -> None:
            async with net.admin() as admin:
                await admin.set_policy(POLICY, "enforcement tests")

        _run(apply())
        yield net
    finally:
        net.stop()
        os.environ.pop("UMBRA_POSTURE_REPORT_INTERVAL", None)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run with a bound, so a regression fails this test instead of hanging CI."""
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def _identity(net: Quickstart, name: str) -> Path:
    return net.root / f"{name}.json"  # where Quickstart.enroll wrote it


def _refusal_reason(net: Quickstart, message: str) -> str:
    """What an admin learns from the decision id a refused endpoint was given."""
    decision = message.split("decision ", 1)[1].split(";", 1)[0]

    async def look_up() -> str:
        async with net.admin() as admin:
            return str((await admin.decision(decision))["reason"])

    return _run(look_up())


def _web_app(seen: list[str]) -> FastAPI:
    app = FastAPI()

    @app.get("/public")
    async def public(request: Request) -> dict[str, str]:
        seen.append(f"GET /public from {request.scope['extensions']['umbranet']['peer']['name']}")
        return {"hello": "world"}

    @app.post("/admin")
    async def admin(request: Request) -> dict[str, str]:
        seen.append(f"POST /admin from {request.scope['extensions']['umbranet']['peer']['name']}")
        return {"admin": "done"}

    return app


def test_http_rules_are_enforced_by_the_hosting_endpoint(network: Quickstart) -> None:
    seen: list[str] = []

    async def main() -> dict[str, httpx.Response]:
        out: dict[str, httpx.Response] = {}
        async with (
            Context.from_file(_identity(network, "web-host")) as host,
            AsgiServer(host, "web", _web_app(seen)),
        ):
            for who in ("alice", "bob"):
                async with Context.from_file(_identity(network, who)) as ctx:
                    transport = UmbraTransport(ctx)
                    async with httpx.AsyncClient(transport=transport) as client:
                        out[f"{who} GET"] = await client.get("http://web.umbra/public")
                        out[f"{who} POST"] = await client.post(
                            "http://web.umbra/admin", content=b"x"
                        )
        return out

    responses = _run(main())
    assert responses["alice GET"].status_code == 200
    assert responses["alice GET"].json() == {"hello": "world"}
    denied = responses["alice POST"]
    assert denied.status_code == 403
    assert denied.headers["x-umbra-code"] == "http_denied"
    assert "no http rule allows alice to POST /admin on 'web'" in denied.text
    assert responses["bob POST"].status_code == 200
    # The refused request never reached the application.
    assert seen == ["GET /public from alice", "GET /public from bob", "POST /admin from bob"]


def test_a_failing_posture_closes_the_live_stream_and_refuses_new_dials(
    network: Quickstart, tmp_path: Path
) -> None:
    sentry_binary = tmp_path / SENTRY
    shutil.copy(shutil.which("sleep") or "/bin/sleep", sentry_binary)
    sentry = subprocess.Popen([str(sentry_binary), "120"])

    async def main() -> tuple[StreamReset, float, DialError]:
        async with (
            Context.from_file(_identity(network, "vault-host")) as host,
            Context.from_file(_identity(network, "carol")) as carol,
        ):
            listener = await host.listen("vault").start()
            server = asyncio.get_running_loop().create_task(echo_forever(listener))
            stream = await carol.dial("vault")  # allowed: the sentry runs
            stream.write(b"ping")
            assert await stream.readexactly(4) == b"ping"
            started = time.perf_counter()
            sentry.kill()
            sentry.wait()
            with pytest.raises(StreamReset) as reset:
                for _ in range(2000):  # bounded: the reset arrives through the push path
                    stream.write(b"x")
                    await stream.read(1)
            elapsed = time.perf_counter() - started
            with pytest.raises(DialError) as refused:
                await carol.dial("vault")
            server.cancel()
            await listener.close()
            return reset.value, elapsed, refused.value

    try:
        reset, elapsed, refused = _run(main())
    finally:
        sentry.kill()
        sentry.wait()
    assert reset.code == "revoked"
    assert f"process '{SENTRY}' not running" in reset.reason
    assert refused.code == "not_authorized"
    assert "posture:sentry failed" in _refusal_reason(network, refused.reason)
    print(f"\nrevocation delay (posture fails -> stream reset): {elapsed * 1e3:.0f} ms")


def test_port_rules_decide_per_port_and_the_host_sees_the_port(network: Quickstart) -> None:
    async def main() -> tuple[int | None, DialError]:
        async with (
            Context.from_file(_identity(network, "web-host")) as host,
            Context.from_file(_identity(network, "bob")) as bob,
        ):
            listener = await host.listen("other").start()
            dialed = await bob.dial("other", port=8080)
            accepted = await listener.accept()
            with pytest.raises(DialError) as refused:
                await bob.dial("other", port=22)
            dialed.close()
            await listener.close()
            return accepted.peer.port, refused.value

    port, refused = _run(main())
    assert port == 8080
    assert refused.code == "not_authorized"
    assert "port 22" not in refused.reason  # the endpoint gets only a decision id
    assert "port 22" in _refusal_reason(network, refused.reason)


def test_views_show_only_what_policy_allows(network: Quickstart) -> None:
    async def view(name: str) -> dict[str, Any]:
        async with ControllerClient(IdentityFile.load(_identity(network, name))) as client:
            return await client.view()

    alice = _run(view("alice"))
    assert alice["services"] == {"web": ["dial"]}
    assert [p["name"] for p in alice["peers"]] == ["web-host"]
    host_key = alice["peers"][0]["noise_public_key"]
    assert host_key and alice["http"] == {}

    host = _run(view("web-host"))
    assert host["services"] == {"other": ["bind"], "web": ["bind"]}
    assert [p["name"] for p in host["peers"]] == ["alice", "bob"]
    assert [r["names"] for r in host["http"]["web"]["rules"]] == [["alice"], ["bob"]]

    carol = _run(view("carol"))  # her only rule needs the sentry posture, which fails now
    assert carol["services"] == {}
    for outsider in ("vault", "vault-host", "carol"):
        assert f"'{outsider}'" not in repr([alice, host, carol]), outsider
