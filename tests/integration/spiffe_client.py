"""An independent SPIFFE Workload API client (py-spiffe), run as its own process by the tests.

Separate process because py-spiffe's generated protobuf messages and ours share the spec's
package-less names, which clash in one process. It imports nothing from umbranet.

    python spiffe_client.py SOCKET fetch AUDIENCE   one JSON line: what every call returned
    python spiffe_client.py SOCKET watch            one JSON line per X.509 context update
    python spiffe_client.py SOCKET raw              one JSON line: statuses of malformed calls
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import JwtSvid, WorkloadApiClient, X509Svid
from spiffe._proto import workload_pb2, workload_pb2_grpc


def _say(data: dict[str, Any]) -> None:
    print(json.dumps(data), flush=True)


def _verify_chain(svid: X509Svid, authorities: list[Any]) -> bool:
    """The leaf is signed by one of the bundle's CAs and matches the private key."""
    leaf = svid.leaf
    public = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    mine = svid.private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if public != mine:
        return False
    for ca in authorities:
        try:
            ca.public_key().verify(
                leaf.signature,
                leaf.tbs_certificate_bytes,
                ec.ECDSA(leaf.signature_hash_algorithm),
            )
        except Exception:
            continue
        return True
    return False


def fetch(socket: str, audience: str) -> None:
    with WorkloadApiClient(socket_path=socket, default_timeout=20) as client:
        svid = client.fetch_x509_svid()
        td = svid.spiffe_id.trust_domain
        bundles = client.fetch_x509_bundles()
        bundle = bundles.get_bundle_for_trust_domain(td)
        assert bundle is not None
        context = client.fetch_x509_context()
        jwt = client.fetch_jwt_svid({audience})
        validated = client.validate_jwt_svid(jwt.token, audience)
        jwt_bundles = client.fetch_jwt_bundles()
        jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(td)
        assert jwt_bundle is not None
        local = JwtSvid.parse_and_validate(jwt.token, jwt_bundle, {audience})
        try:
            client.validate_jwt_svid(jwt.token, "someone-else")
            wrong_audience = "accepted"
        except Exception as exc:
            wrong_audience = type(exc).__name__
        try:
            client.fetch_jwt_svids(set())
            no_audience = "accepted"
        except Exception as exc:
            no_audience = type(exc).__name__
    _say(
        {
            "spiffe_id": str(svid.spiffe_id),
            "serial": svid.leaf.serial_number,
            "chain_verifies": _verify_chain(svid, list(bundle.x509_authorities)),
            "context_spiffe_id": str(context.default_svid.spiffe_id),
            "jwt_sub": str(jwt.spiffe_id),
            "jwt_aud": sorted(jwt.audience),
            "jwt_exp": jwt.expiry,
            "validated_sub": str(validated.spiffe_id),
            "local_sub": str(local.spiffe_id),
            "jwt_kids": sorted(jwt_bundle.jwt_authorities),
            "wrong_audience": wrong_audience,
            "no_audience": no_audience,
        }
    )


def watch(socket: str) -> None:
    """Print the leaf serial of every X.509 context update until stdin closes."""
    client = WorkloadApiClient(socket_path=socket)

    def updated(context: Any) -> None:
        svid = context.default_svid
        _say(
            {"event": "update", "spiffe_id": str(svid.spiffe_id), "serial": svid.leaf.serial_number}
        )

    def failed(error: Exception) -> None:
        _say({"event": "error", "error": repr(error)})

    handle = client.stream_x509_contexts(on_success=updated, on_error=failed)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    handle.cancel()
    client.close()


def raw(socket: str) -> None:
    """Calls py-spiffe's client would never make: no security header, no audience, another
    SPIFFE ID; each answer's status code and details."""
    target = "unix:" + socket.removeprefix("unix:").replace("///", "/", 1)
    with grpc.insecure_channel(target) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        result: dict[str, Any] = {}
        try:
            next(iter(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=20)))
            result["x509"] = "OK"
        except grpc.RpcError as exc:
            result["x509"] = [exc.code().name, exc.details()]
        calls = {
            "jwt": ((), ["a"], ""),
            "jwt_no_audience": (_HEADER, [], ""),
            "jwt_other_id": (_HEADER, ["a"], "spiffe://demo.umbra/workload/someone-else"),
        }
        for name, (metadata, audience, spiffe_id) in calls.items():
            request = workload_pb2.JWTSVIDRequest(audience=audience, spiffe_id=spiffe_id)
            try:
                stub.FetchJWTSVID(request, timeout=20, metadata=metadata)
                result[name] = "OK"
            except grpc.RpcError as exc:
                result[name] = [exc.code().name, exc.details()]
    _say(result)


_HEADER = (("workload.spiffe.io", "true"),)


if __name__ == "__main__":
    socket_arg, command, *rest = sys.argv[1:]
    if command == "fetch":
        fetch(socket_arg, rest[0])
    elif command == "watch":
        watch(socket_arg)
    elif command == "raw":
        raw(socket_arg)
    else:
        raise SystemExit(f"unknown command {command}")
