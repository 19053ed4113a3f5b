"""The Workload API server in process: our generated stub as the client, a real Unix socket.

(py-spiffe, the independent client, is exercised in tests/integration/test_workload_api.py.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.controller_harness import Harness, make_harness
from umbranet.agent.workload import (
    JwtSvidCache,
    WorkloadApiError,
    WorkloadApiServer,
    parse_endpoint_socket,
    x509_material,
)
from umbranet.agent.workload import workload_pb2 as pb
from umbranet.agent.workload import workload_pb2_grpc as pb_grpc
from umbranet.client.controller import JwtSvidGrant
from umbranet.pki import SpiffeId
from umbranet.pki.jwt_svid import JwtAuthority
from umbranet.testing.clock import FakeClock

HEADER = (("workload.spiffe.io", "true"),)
JWT_KEY = JwtAuthority.generate()


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


class Served:
    """A started server and a client stub on its socket."""

    def __init__(self, server: WorkloadApiServer) -> None:
        self.server = server
        self.channel = grpc.insecure_channel(f"unix:{server.path}")
        self.stub = pb_grpc.SpiffeWorkloadAPIStub(self.channel)
        self.jwt_requests: list[tuple[str, ...]] = []

    def close(self) -> None:
        self.channel.close()
        self.server.stop()


def _serve(path: Path, refuse: WorkloadApiError | None = None) -> Served:
    served: Served

    def fetch(audience: tuple[str, ...]) -> concurrent.futures.Future[JwtSvidGrant]:
        served.jwt_requests.append(audience)
        future: concurrent.futures.Future[JwtSvidGrant] = concurrent.futures.Future()
        if refuse is not None:
            future.set_exception(refuse)
        else:
            subject = SpiffeId.parse("spiffe://demo.umbra/device/alice")
            token, expires = JWT_KEY.sign(subject, audience, datetime.now(UTC))
            future.set_result(JwtSvidGrant(token, expires))
        return future

    served = Served(WorkloadApiServer(path, fetch))
    return served


def _code(call: Any) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error: Any = info.value
    return error.code().name, error.details()


def test_endpoint_socket_forms() -> None:
    assert parse_endpoint_socket("unix:///run/x.sock") == Path("/run/x.sock")
    assert parse_endpoint_socket("unix:/run/x.sock") == Path("/run/x.sock")
    assert parse_endpoint_socket("/run/x.sock") == Path("/run/x.sock")
    for bad in ("tcp://127.0.0.1:1", "unix:", ""):
        with pytest.raises(ValueError):
            parse_endpoint_socket(bad)


def test_jwt_cache_reuses_until_half_life_and_shares_fetches() -> None:
    clock = FakeClock(datetime(2026, 5, 1, tzinfo=UTC))
    calls: list[tuple[str, ...]] = []

    async def fetch(audience: tuple[str, ...]) -> JwtSvidGrant:
        calls.append(audience)
        await asyncio.sleep(0)
        return JwtSvidGrant(f"token-{len(calls)}", clock() + timedelta(minutes=5))

    async def main() -> None:
        cache = JwtSvidCache(fetch, clock)
        first, again = await asyncio.gather(cache.get(["b", "a"]), cache.get(["a", "b", "a"]))
        assert first is again and calls == [("a", "b")]
        clock.advance(timedelta(minutes=2, seconds=29))
        assert await cache.get(["a", "b"]) is first
        clock.advance(timedelta(seconds=1))
        assert (await cache.get(["a", "b"])).token == "token-2"
        assert (await cache.get(["c"])).token == "token-3"
        with pytest.raises(ValueError):
            await cache.get([])

    asyncio.run(main())


def test_x509_streams_send_now_and_on_every_rotation(h: Harness, tmp_path: Path) -> None:
    alice, bob = h.new_device("alice"), h.new_device("bob")
    served = _serve(tmp_path / "w.sock")
    served.server.publish_x509(x509_material(alice))
    served.server.start()
    try:
        assert served.server.path.stat().st_mode & 0o777 == 0o600
        stream = served.stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER, timeout=30)
        bundles = served.stub.FetchX509Bundles(pb.X509BundlesRequest(), metadata=HEADER)
        first = next(stream)
        (svid,) = first.svids
        material = x509_material(alice)
        assert svid.spiffe_id == alice.spiffe_id
        assert (svid.x509_svid, svid.x509_svid_key) == (material.chain_der, material.key_der)
        assert svid.bundle == material.bundle_der
        assert dict(next(bundles).bundles) == {"demo.umbra": material.bundle_der}

        served.server.publish_x509(x509_material(bob))  # a rotation
        assert next(stream).svids[0].spiffe_id == bob.spiffe_id
        stream.cancel()
        bundles.cancel()
    finally:
        served.close()
    assert not served.server.path.exists()


def test_jwt_svids_bundles_and_validation(h: Harness, tmp_path: Path) -> None:
    alice = h.new_device("alice")
    served = _serve(tmp_path / "w.sock")
    served.server.publish_x509(x509_material(alice))
    served.server.publish_jwt_bundle(JWT_KEY.bundle.to_json())
    served.server.start()
    stub = served.stub
    try:
        response = stub.FetchJWTSVID(pb.JWTSVIDRequest(audience=["db", "web"]), metadata=HEADER)
        (svid,) = response.svids
        assert svid.spiffe_id == alice.spiffe_id
        assert served.jwt_requests == [("db", "web")]

        bundles = stub.FetchJWTBundles(pb.JWTBundlesRequest(), metadata=HEADER)
        assert dict(next(bundles).bundles) == {"demo.umbra": JWT_KEY.bundle.to_json()}
        bundles.cancel()

        request = pb.ValidateJWTSVIDRequest(audience="web", svid=svid.svid)
        valid = stub.ValidateJWTSVID(request, metadata=HEADER)
        assert valid.spiffe_id == "spiffe://demo.umbra/device/alice"
        assert list(valid.claims["aud"]) == ["db", "web"]
        assert valid.claims["exp"] > datetime.now(UTC).timestamp()

        wrong = pb.ValidateJWTSVIDRequest(audience="mail", svid=svid.svid)
        code, details = _code(lambda: stub.ValidateJWTSVID(wrong, metadata=HEADER))
        assert (code, details.split(":")[0]) == ("INVALID_ARGUMENT", "jwt_wrong_audience")
        forged = pb.ValidateJWTSVIDRequest(audience="web", svid=svid.svid[:-4] + "AAAA")
        code, _ = _code(lambda: stub.ValidateJWTSVID(forged, metadata=HEADER))
        assert code == "INVALID_ARGUMENT"
        empty = pb.JWTSVIDRequest(audience=[])
        assert _code(lambda: stub.FetchJWTSVID(empty, metadata=HEADER))[0] == "INVALID_ARGUMENT"
    finally:
        served.close()


def test_every_call_needs_the_security_header(h: Harness, tmp_path: Path) -> None:
    served = _serve(tmp_path / "w.sock")
    served.server.publish_x509(x509_material(h.new_device("alice")))
    served.server.start()
    stub = served.stub
    calls = [
        lambda: next(stub.FetchX509SVID(pb.X509SVIDRequest())),
        lambda: next(stub.FetchX509Bundles(pb.X509BundlesRequest())),
        lambda: next(stub.FetchJWTBundles(pb.JWTBundlesRequest())),
        lambda: stub.FetchJWTSVID(pb.JWTSVIDRequest(audience=["a"])),
        lambda: stub.ValidateJWTSVID(pb.ValidateJWTSVIDRequest(audience="a", svid="x")),
        lambda: stub.FetchJWTSVID(
            pb.JWTSVIDRequest(audience=["a"]), metadata=(("workload.spiffe.io", "false"),)
        ),
    ]
    try:
        for call in calls:
            assert _code(call) == ("INVALID_ARGUMENT", "security header missing from request")
        assert served.jwt_requests == []
        assert served.server.statistics()["counters"]["refused.invalid_argument"] == len(calls)
    finally:
        served.close()


def test_controller_refusals_reach_the_client(h: Harness, tmp_path: Path) -> None:
    refusal = WorkloadApiError("UNAVAILABLE", "controller: unreachable")
    served = _serve(tmp_path / "w.sock", refuse=refusal)
    served.server.publish_x509(x509_material(h.new_device("alice")))
    served.server.start()
    try:
        request = pb.JWTSVIDRequest(audience=["a"])
        code = _code(lambda: served.stub.FetchJWTSVID(request, metadata=HEADER))
        assert code == ("UNAVAILABLE", "controller: unreachable")
    finally:
        served.close()


def test_the_socket_is_never_stolen(h: Harness, tmp_path: Path) -> None:
    path = tmp_path / "w.sock"
    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        _serve(path).server.start()
    path.unlink()
    first = _serve(path)
    first.server.start()
    try:
        with pytest.raises(OSError, match="in use"):
            _serve(path).server.start()
    finally:
        first.close()
    # A socket file left by a dead server is replaced.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    again = _serve(path)
    again.server.publish_x509(x509_material(h.new_device("alice")))
    again.server.start()
    try:
        reply = next(again.stub.FetchX509SVID(pb.X509SVIDRequest(), metadata=HEADER))
        assert reply.svids[0].spiffe_id.endswith("/alice")
    finally:
        again.close()
