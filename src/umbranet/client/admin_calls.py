"""The administrator's calls of `ControllerClient`: identities, services, routers to create,
the policy, its explanations and the audit log (every route here answers 403 to others)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpx

from umbranet.client.calls import Calls
from umbranet.client.calls import json_dict as _json_dict
from umbranet.client.calls import segment as _seg
from umbranet.client.models import (
    CreatedIdentity,
    CreatedRouter,
    IdentityInfo,
    Intercept,
    ServiceInfo,
    parse,
    parse_list,
)
from umbranet.client.transport import malformed_answers_are_bad_responses
from umbranet.schema import EnrollmentTokenOut, MetricsOut

__all__ = ["AdminCalls"]


@malformed_answers_are_bad_responses
class AdminCalls(Calls):
    async def create_identity(
        self, name: str, *, kind: str = "device", attributes: Iterable[str] = ()
    ) -> CreatedIdentity:
        body = {"name": name, "kind": kind, "attributes": list(attributes)}
        return parse(CreatedIdentity, await self._call("POST", "/v1/identities", json=body))

    async def list_identities(self) -> list[IdentityInfo]:
        return parse_list(IdentityInfo, await self._call("GET", "/v1/identities"))

    async def get_identity(self, name: str) -> IdentityInfo:
        return parse(IdentityInfo, await self._call("GET", f"/v1/identities/{_seg(name)}"))

    async def disable_identity(self, name: str) -> IdentityInfo:
        return parse(IdentityInfo, await self._call("POST", f"/v1/identities/{_seg(name)}/disable"))

    async def enable_identity(self, name: str) -> IdentityInfo:
        return parse(IdentityInfo, await self._call("POST", f"/v1/identities/{_seg(name)}/enable"))

    async def revoke_certificates(self, name: str) -> str:
        """Revoke the identity's certificates; returns its new enrollment token."""
        data = await self._call("POST", f"/v1/identities/{_seg(name)}/revoke")
        return parse(EnrollmentTokenOut, data).enrollment_token

    async def new_enrollment(self, name: str) -> str:
        """A fresh enrollment token for an existing identity."""
        data = await self._call("POST", f"/v1/identities/{_seg(name)}/enrollments")
        return parse(EnrollmentTokenOut, data).enrollment_token

    async def create_service(
        self,
        name: str,
        *,
        dial_attributes: Iterable[str] = (),
        bind_attributes: Iterable[str] = (),
        host_address: str | None = None,
        intercepts: Iterable[Intercept] = (),
    ) -> ServiceInfo:
        body = {
            "name": name,
            "dial_attributes": list(dial_attributes),
            "bind_attributes": list(bind_attributes),
            "host_address": host_address,
            "intercepts": [{"host": i.host, "port": i.port} for i in intercepts],
        }
        return parse(ServiceInfo, await self._call("POST", "/v1/services", json=body))

    async def list_services(self) -> list[ServiceInfo]:
        return parse_list(ServiceInfo, await self._call("GET", "/v1/services"))

    async def delete_service(self, name: str) -> None:
        await self._call("DELETE", f"/v1/services/{_seg(name)}")

    async def create_router(self, name: str) -> CreatedRouter:
        return parse(CreatedRouter, await self._call("POST", "/v1/routers", json={"name": name}))

    async def metrics(self) -> dict[str, int]:
        """The controller's counters (verdicts, refused requests by code)."""
        return parse(MetricsOut, await self._call("GET", "/v1/metrics")).counters

    # policy and audit (admin)

    async def get_policy(self) -> dict[str, Any]:
        """The version in force: ``version``, ``text``, ``created_at``, ``created_by``."""
        return _json_dict(await self._call("GET", "/v1/policy"))

    async def set_policy(self, text: str, comment: str | None = None) -> dict[str, Any]:
        """Validate, test and apply; ControllerError ``policy_invalid``/``policy_tests_failed``."""
        body = {"text": text, "comment": comment}
        return _json_dict(await self._call("PUT", "/v1/policy", json=body))

    async def test_policy(self, text: str) -> dict[str, Any]:
        return _json_dict(await self._call("POST", "/v1/policy/test", json={"text": text}))

    async def policy_history(self) -> list[dict[str, Any]]:
        return [_json_dict(v) for v in await self._call("GET", "/v1/policy/history")]

    async def rollback_policy(self, version: int) -> dict[str, Any]:
        body = {"version": version}
        return _json_dict(await self._call("POST", "/v1/policy/rollback", json=body))

    async def explain(
        self,
        identity: str,
        service: str,
        *,
        action: str = "dial",
        port: int | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> dict[str, Any]:
        """The verdict, every rule considered, and ``rendered`` (plain text)."""
        body = {
            "identity": identity,
            "service": service,
            "action": action,
            "port": port,
            "method": method,
            "path": path,
        }
        return _json_dict(await self._call("POST", "/v1/policy/explain", json=body))

    async def decision(self, decision_id: str) -> dict[str, Any]:
        """A refused ticket by the decision id its endpoint was given (admin): who, what,
        when, and the reason (``rendered``: plain text)."""
        path = f"/v1/policy/decisions/{_seg(decision_id)}"
        return _json_dict(await self._call("GET", path))

    async def audit(self, limit: int = 100, action: str | None = None) -> list[dict[str, Any]]:
        """Administrative changes and access refusals, newest first (``action`` filters)."""
        query = httpx.QueryParams({"limit": int(limit), **({"action": action} if action else {})})
        return [_json_dict(e) for e in await self._call("GET", f"/v1/audit?{query}")]
