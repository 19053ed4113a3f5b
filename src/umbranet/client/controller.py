"""Async client of the controller HTTP API (httpx over mutual TLS), one method per route.

Built from an `IdentityFile`: the identity's key and certificate authenticate us, the bundle's
CA authenticates the controller (with host name checking against the controller URL).
`ControllerClient.enroll` is the one call made *before* we have an identity: it reads the
token unverified to learn the controller URL (``https://`` only) and the CA fingerprint,
fetches the bundle without verification only to find the one CA certificate with that
fingerprint, then enrolls over TLS that trusts exactly that certificate (nothing else the
unverified bundle held: an on-path attacker can append its own CA to it). The trust bundle
kept in the identity file (CA certificates and ticket keys) is the one the controller sent
over that pinned connection. The TLS private key and the Noise private key are generated
here and never sent.

Every error the controller reports becomes `ControllerError(code, message, status)`; a
controller that cannot be reached is ``unreachable`` (status 0).
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from types import TracebackType
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from umbranet.aio.tls import load_identity
from umbranet.client.admin_calls import AdminCalls
from umbranet.client.enrollment_tls import pinned_context
from umbranet.client.follow import renewal_due
from umbranet.client.mesh_calls import MeshCalls, MeshRoute
from umbranet.client.models import (
    CreatedIdentity,
    CreatedRouter,
    IdentityInfo,
    Intercept,
    JwtSvidGrant,
    MeInfo,
    RouterAddress,
    RouterInfo,
    ServiceAccess,
    ServiceInfo,
    TicketGrant,
    parse,
)
from umbranet.client.transport import (
    ControllerError,
    Failover,
    directory,
    error_of,
    http_client,
    json_object,
    malformed_answers_are_bad_responses,
    may_fail_over,
    request,
    server_context,
    transport_error,
)
from umbranet.pki import (
    IdentityFile,
    PkiError,
    TrustBundle,
    generate_noise_keypair,
    generate_tls_key,
    key_to_pem,
    make_csr,
    read_enrollment_token_unverified,
)
from umbranet.pki.bundle_update import apply_bundle_updates
from umbranet.pki.noise_pop import NoiseChallenge, csr_binding, prove_noise_key
from umbranet.schema import EndpointOut, PostureOut

__all__ = [
    "ControllerClient",
    "ControllerError",
    "CreatedIdentity",
    "CreatedRouter",
    "IdentityInfo",
    "Intercept",
    "JwtSvidGrant",
    "MeInfo",
    "MeshRoute",
    "RouterAddress",
    "RouterInfo",
    "ServiceAccess",
    "ServiceInfo",
    "TicketGrant",
]

DEFAULT_TIMEOUT = 10.0


@malformed_answers_are_bad_responses
class ControllerClient(AdminCalls, MeshCalls):
    """Calls the controller as `identity`; use as ``async with`` or call `aclose`.

    `transport` replaces the network (tests pass an ``httpx.ASGITransport``).
    """

    def __init__(
        self,
        identity: IdentityFile,
        *,
        request_timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._identity = identity
        self._timeout = request_timeout
        self._transport = transport
        self._http = self._make_http(identity)
        self.mesh_answer: dict[str, Any] = {}  # the last mesh report's strategies and version

    @property
    def identity(self) -> IdentityFile:
        """The identity in use (replaced by `renew`)."""
        return self._identity

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ControllerClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # public

    async def bundle(self) -> TrustBundle:
        """The controller's current trust bundle (CA certificates and ticket keys)."""
        data = await self._call("GET", "/v1/bundle")
        return _bundle(data)

    @classmethod
    async def enroll(
        cls,
        token: str,
        *,
        request_timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> IdentityFile:
        """Enroll with a one-time token; returns the new identity (not yet saved)."""
        try:
            claims = read_enrollment_token_unverified(token.strip())
        except PkiError as exc:
            raise ControllerError("token_invalid", exc.reason, 0) from exc
        url = claims.controller_url
        if not url.lower().startswith("https://"):
            raise ControllerError(
                "insecure_url", f"the enrollment token names a non-HTTPS controller: {url!r}", 0
            )
        # The token names the replica that minted it; when that one is down, any replica of
        # the network will do (`UMBRA_CONTROLLERS`): the token pins the CA, not the server.
        last: ControllerError | None = None
        for candidate in directory.candidates("", url):
            try:
                return await cls._enroll_at(
                    candidate, token, claims.ca_fingerprint, request_timeout, transport
                )
            except ControllerError as exc:
                if not may_fail_over(exc, "POST", "/v1/enroll"):
                    raise
                directory.failed("", candidate)
                last = exc
        assert last is not None
        raise last

    @classmethod
    async def _enroll_at(
        cls,
        url: str,
        token: str,
        ca_fingerprint: str,
        request_timeout: float,
        transport: httpx.AsyncBaseTransport | None,
    ) -> IdentityFile:
        # Step 1: the bundle, unverified, only to learn the certificate the token pins.
        async with http_client(url, False, request_timeout, transport) as insecure:
            offered = _bundle(await request(insecure, "GET", "/v1/bundle"))
        pinned_ca = offered.ca_with_fingerprint(ca_fingerprint)
        if pinned_ca is None:
            raise _ca_mismatch()
        # Step 2: over TLS that trusts only the pinned CA, prove the Noise key and enroll.
        key = generate_tls_key()
        noise_private, noise_public = generate_noise_keypair()
        csr = make_csr(key)
        context = pinned_context(pinned_ca)
        async with http_client(url, context, request_timeout, transport) as pinned:
            challenge = await _noise_challenge(pinned)
            body = {
                "token": token.strip(),
                "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                "noise_public_key": base64.b64encode(noise_public).decode("ascii"),
                "noise_challenge": challenge.challenge,
                "noise_proof": _prove(noise_private, challenge, csr),
            }
            data = await request(pinned, "POST", "/v1/enroll", json=body)
        if not isinstance(data, dict):
            raise ControllerError("enroll_response_invalid", "the answer is not an object", 0)
        issued_bundle = _bundle(data.get("bundle"))
        _check_fingerprint(issued_bundle, ca_fingerprint)
        try:
            return IdentityFile(
                name=str(data["name"]),
                spiffe_id=str(data["spiffe_id"]),
                key_pem=key_to_pem(key),
                cert_pem=str(data["cert_pem"]).encode("ascii"),
                bundle=issued_bundle,
                controller_url=url,  # the replica that answered: a live one
                noise_private_key=noise_private,
            )
        except PkiError as exc:
            raise ControllerError("enroll_response_invalid", exc.reason, 0) from exc

    # any identity

    async def renew(self) -> IdentityFile:
        """A fresh certificate for a fresh TLS key (same Noise key); the client switches to it.

        A newer trust bundle that comes with it (signed by a key of ours) is taken too.

        The caller saves the returned identity (``identity.save(path)``).
        """
        key = generate_tls_key()
        csr = make_csr(key)
        challenge = await self._http.attempt(_noise_challenge, "GET", "/v1/noise-challenge")
        body = {
            "csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            "noise_challenge": challenge.challenge,
            "noise_proof": _prove(self._identity.noise_private_key, challenge, csr),
        }
        data = await self._call("POST", "/v1/renew", json=body)
        updates = data.get("bundle_updates") if isinstance(data, dict) else None
        bundle = apply_bundle_updates(
            updates if isinstance(updates, list) else [], self._identity.bundle
        )
        try:
            renewed = IdentityFile(
                name=self._identity.name,
                spiffe_id=self._identity.spiffe_id,
                key_pem=key_to_pem(key),
                cert_pem=str(data["cert_pem"]).encode("ascii"),
                bundle=bundle,
                controller_url=self._identity.controller_url,
                noise_private_key=self._identity.noise_private_key,
            )
        except PkiError as exc:
            raise ControllerError("renew_response_invalid", exc.reason, 0) from exc
        old = self._http
        self._identity = renewed
        self._http = self._make_http(renewed)
        await old.aclose()
        return renewed

    async def refresh_bundle(self) -> IdentityFile | None:
        """Take a newer trust bundle (after a rotation) if the controller has one that our
        bundle vouches for; the client switches to it. None if ours is current."""
        data = await self._call("GET", "/v1/bundle/updates")
        updates = data.get("updates") if isinstance(data, dict) else None
        current = self._identity.bundle
        bundle = apply_bundle_updates(updates if isinstance(updates, list) else [], current)
        if bundle is current:
            return None
        refreshed = self._identity.with_bundle(bundle)
        old = self._http
        self._identity = refreshed
        self._http = self._make_http(refreshed)
        await old.aclose()
        return refreshed

    async def renew_if_due(self, now: datetime) -> IdentityFile | None:
        """Renew when past half of the certificate's lifetime; None if not due yet."""
        if not renewal_due(self._identity, now):
            return None
        return await self.renew()

    async def me(self) -> MeInfo:
        return parse(MeInfo, await self._call("GET", "/v1/me"))

    async def ticket(self, service: str, action: str, port: int | None = None) -> TicketGrant:
        """A session ticket to ``dial`` or ``bind`` `service` (dial: on `port`, if given), or
        ControllerError ``not_authorized`` (for a service that does not exist too; the
        message holds a decision id an administrator can look up, never the reason)."""
        body: dict[str, Any] = {"service": service, "action": action}
        if port is not None:
            body["port"] = port
        return parse(TicketGrant, await self._call("POST", "/v1/tickets", json=body))

    async def report_posture(self, report: dict[str, Any]) -> bool:
        """Tell the controller what this endpoint looks like (see `sdk.posture`); returns
        whether the report changed access (the controller then re-checks live streams)."""
        return parse(PostureOut, await self._call("POST", "/v1/posture", json=report)).rechecked

    async def view(self) -> dict[str, Any]:
        """This identity's filtered view: ``services`` (name -> actions), ``peers`` (name,
        SPIFFE ID, Noise key) and ``http`` (rules of the services it hosts)."""
        data: dict[str, Any] = await self._call("GET", "/v1/view")
        return data

    async def set_network_endpoint(self, port: int, host: str | None = None) -> str:
        """Publish where this identity's WireGuard device listens (network mode); without
        `host` the controller uses the address it sees us at. Returns ``host:port``."""
        body: dict[str, Any] = {"port": port}
        if host is not None:
            body["host"] = host
        data = await self._call("PUT", "/v1/network/endpoint", json=body)
        return parse(EndpointOut, data).endpoint

    async def set_network_routes(self, routes: list[str], exit_node: bool) -> list[Any]:
        """Advertise subnet routes (and, with `exit_node`, the default routes) for this
        identity; they count once approved. Returns the stored routes with their state."""
        body = {"routes": routes, "exit_node": exit_node}
        data = await self._call("PUT", "/v1/network/routes", json=body)
        return list(data["routes"])

    async def network_routes(self) -> list[Any]:
        """(Admin.) Every advertised route and its approval."""
        return list((await self._call("GET", "/v1/network/routes"))["routes"])

    async def approve_routes(self, identity: str, prefixes: list[str], approve: bool) -> Any:
        """(Admin.) Approve (or withdraw approval of) routes an identity advertises."""
        body = {"identity": identity, "prefixes": prefixes, "approve": approve}
        return await self._call("POST", "/v1/network/routes/approve", json=body)

    async def network_explain(self, identity: str, target: str) -> Any:
        """(Admin.) The network rules' verdict for ``identity`` -> ``ADDR[:PORT][/PROTO]``."""
        body = {"identity": identity, "target": target}
        return await self._call("POST", "/v1/network/explain", json=body)

    async def nat_config(self) -> dict[str, Any]:
        """NAT traversal settings: ``stun`` (the routers' STUN ``host:port`` list) and
        ``turn`` (urls, a time-limited username and password, realm, expires) or None."""
        data: dict[str, Any] = await self._call("GET", "/v1/network/nat")
        return data

    async def set_candidates(self, candidates: list[dict[str, Any]], nat: str) -> None:
        """Publish this identity's WireGuard port candidates (host/srflx) and NAT mapping."""
        await self._call(
            "PUT", "/v1/network/candidates", json={"candidates": candidates, "nat": nat}
        )

    async def peer_candidates(self) -> dict[str, Any]:
        """Candidates of the peers the filtered view lists, by SPIFFE ID."""
        data: dict[str, Any] = (await self._call("GET", "/v1/network/candidates"))["peers"]
        return data

    async def set_router_stun(self, host: str, port: int) -> str:
        """(Router identities only.) Announce where this router answers STUN."""
        data = await self._call("PUT", "/v1/routers/self/stun", json={"host": host, "port": port})
        return str(data["address"])

    # push channel

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Server-sent events as (name, data) until the connection ends.

        Raises ControllerError ``unreachable`` when the stream cannot be opened or breaks.
        """
        timeout = httpx.Timeout(self._timeout, read=None)
        try:
            async with self._http.stream("/v1/events", timeout) as response:
                name, data = "message", ""
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                    elif not line and data:
                        event = json_object(data)
                        if name in ("hello", "controllers"):
                            directory.learn(self._http.network, event.get("controllers") or [])
                        yield name, event
                        name, data = "message", ""
        except httpx.TransportError as exc:
            self._http.broke()
            raise ControllerError("unreachable", f"event stream broke: {exc}", 0) from exc

    async def recheck(self, grants: list[tuple[str, str, str]]) -> tuple[int, dict[int, str]]:
        """For a router: which (identity, service, action) grants are no longer allowed."""
        body = {"grants": [{"identity": i, "service": s, "action": a} for i, s, a in grants]}
        data = await self._call("POST", "/v1/recheck", json=body)
        return int(data["epoch"]), {int(d["index"]): str(d["reason"]) for d in data["denied"]}

    # internals

    def _make_http(self, identity: IdentityFile) -> Failover:
        context = server_context(identity.bundle)
        load_identity(context, identity)

        def make(url: str) -> httpx.AsyncClient:
            return http_client(url, context, self._timeout, self._transport)

        return Failover(identity.trust_domain, identity.controller_url, make)

    async def controllers(self) -> list[str]:
        """The live controller replicas' URLs (also learned for failover)."""
        data = await self._call("GET", "/v1/controllers")
        urls = [str(u) for u in data["controllers"]]
        directory.learn(self._http.network, urls)
        return urls

    async def _call(self, method: str, path: str, *, json: Any = None) -> Any:
        return await self._http.request(method, path, json=json)

    # -- JWT-SVIDs (the agent's Workload API) ---------------------------------------------

    async def jwt_svid(self, audience: Iterable[str]) -> JwtSvidGrant:
        """A short-lived JWT-SVID naming this identity, for `audience` (at least one)."""
        data = await self._call("POST", "/v1/jwt-svid", json={"audience": list(audience)})
        return parse(JwtSvidGrant, data)

    async def jwt_bundle(self) -> bytes:
        """The trust domain's JWT-SVID keys as a JWKS document (JSON bytes, as served)."""

        async def get(http: httpx.AsyncClient) -> bytes:
            try:
                response = await http.get("/v1/jwt-bundle")
            except httpx.TransportError as exc:
                raise transport_error(http, exc) from exc
            if not response.is_success:
                raise error_of(response)
            return response.content

        return await self._http.attempt(get, "GET", "/v1/jwt-bundle")


def _check_fingerprint(bundle: TrustBundle, expected: str) -> None:
    if not hmac.compare_digest(bundle.ca_fingerprint(), expected):
        raise _ca_mismatch()


async def _noise_challenge(http: httpx.AsyncClient) -> NoiseChallenge:
    data = await request(http, "GET", "/v1/noise-challenge")
    try:
        return NoiseChallenge(str(data["challenge"]), str(data["public_key"]))
    except (KeyError, TypeError) as exc:
        raise ControllerError("bad_response", "the Noise challenge is malformed", 0) from exc


def _prove(
    noise_private: bytes, challenge: NoiseChallenge, csr: x509.CertificateSigningRequest
) -> str:
    try:
        return prove_noise_key(noise_private, challenge, csr_binding(csr))
    except PkiError as exc:
        raise ControllerError("bad_response", exc.reason, 0) from exc


def _ca_mismatch() -> ControllerError:
    return ControllerError(
        "ca_mismatch",
        "the controller's CA does not match the fingerprint in the enrollment token",
        0,
    )


def _bundle(data: Any) -> TrustBundle:
    try:
        return TrustBundle.from_dict(data)
    except PkiError as exc:
        raise ControllerError("bundle_invalid", exc.reason, 0) from exc
