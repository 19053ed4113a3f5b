"""The mesh calls of `ControllerClient`: a router's registration, state report and route
watch, and the administrator's costs, strategies and path queries (docs/mesh.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from umbranet.client.calls import Calls
from umbranet.client.calls import segment as _seg
from umbranet.client.models import RouterInfo, parse, parse_list
from umbranet.client.transport import malformed_answers_are_bad_responses

__all__ = ["MeshCalls", "MeshRoute"]


@dataclass(frozen=True, slots=True)
class MeshRoute:
    """A route the controller computed for this router: dials for `service` go to the
    neighbouring router `via` (a SPIFFE ID) at total path `cost`."""

    service: str
    via: str
    cost: float


@malformed_answers_are_bad_responses
class MeshCalls(Calls):
    mesh_answer: dict[str, Any]

    async def routers(self) -> list[RouterInfo]:
        return parse_list(RouterInfo, await self._call("GET", "/v1/routers"))

    async def register_router(self, address: str) -> RouterInfo:
        """(Router identities only.) Announce the ``host:port`` endpoints reach us at."""
        data = await self._call("PUT", "/v1/routers/self", json={"address": address})
        return parse(RouterInfo, data)

    async def router_state(
        self,
        services: Iterable[str],
        links: Mapping[str, float | None],
        circuits: int = 0,
        standby: Mapping[str, int] | None = None,
    ) -> list[MeshRoute]:
        """(Router identities only.) Report the services bound here (`standby`: those
        whose best host here is a standby, with its rank), the live router links (peer
        SPIFFE ID -> RTT in ms) and the live circuits; answers with the routes to install.
        The answer's strategies and graph version are in `mesh_answer`."""
        body: dict[str, Any] = {
            "services": sorted(services),
            "links": [{"peer": peer, "rtt_ms": rtt} for peer, rtt in sorted(links.items())],
            "circuits": circuits,
        }
        if standby:
            body["standby"] = dict(standby)
        data = await self._call("POST", "/v1/routers/me/state", json=body)
        self.mesh_answer = {
            "strategies": dict(data.get("strategies") or {}),
            "version": int(data.get("version") or 0),
            "no_transit": bool(data.get("no_transit")),
        }
        return [MeshRoute(r["service"], r["via"], float(r["cost"])) for r in data["routes"]]

    async def watch_mesh(self, after: int, wait: float = 25.0) -> int:
        """(Router identities only.) The mesh graph's version once it differs from `after`
        (or after `wait` seconds): a change means reporting again brings new routes."""
        path = f"/v1/routers/me/watch?after={int(after)}&wait={min(wait, self._timeout / 2):g}"
        data = await self._call("GET", path)
        return int(data["version"])

    # management (admin identity)

    async def set_router_cost(
        self, name: str, cost: float | None, no_transit: bool | None = None
    ) -> dict[str, Any]:
        """(Admin.) The extra cost of paths through router `name` (0 clears it) and whether
        it may be a middle hop; None leaves a setting as it is. Answers both settings."""
        body = {"cost": cost, "no_transit": no_transit}
        data = await self._call("PUT", f"/v1/routers/{_seg(name)}/cost", json=body)
        return {"name": name, "cost": float(data["cost"]), "no_transit": bool(data["no_transit"])}

    async def set_link_cost(self, name: str, peer: str, cost: float) -> float:
        """(Admin.) The extra cost of the link between routers `name` and `peer`."""
        path = f"/v1/routers/{_seg(name)}/links/{_seg(peer)}/cost"
        data = await self._call("PUT", path, json={"cost": cost})
        return float(data["cost"])

    async def set_service_strategy(
        self,
        name: str,
        strategy: str | None,
        transit_only: list[str] | None = None,
        any_transit: bool = False,
    ) -> dict[str, Any]:
        """(Admin.) How routers pick among the hosts of service `name`, and the only routers
        (by name) its dials may cross; None leaves a setting as it is."""
        path = f"/v1/services/{_seg(name)}/strategy"
        body = {"strategy": strategy, "transit_only": transit_only, "any_transit": any_transit}
        return dict(await self._call("PUT", path, json=body))

    async def mesh_path(self, service: str, source: str) -> dict[str, Any]:
        """(Admin.) The routers a dial for `service` entering at router `source` crosses."""
        query = urlencode({"service": service, "from": source})
        data = await self._call("GET", f"/v1/mesh/path?{query}")
        return dict(data)

    async def my_path(self, ticket: str, source: str) -> dict[str, Any]:
        """The routers a dial with `ticket` (this identity's current dial ticket) entering
        at router `source` crosses, each with its link RTT (what `umbra ping` shows)."""
        data = await self._call("POST", "/v1/me/path", json={"ticket": ticket, "from": source})
        return dict(data)

    async def mesh(self) -> dict[str, Any]:
        """(Admin.) The mesh graph as the controller sees it (see docs/mesh.md)."""
        data = await self._call("GET", "/v1/mesh")
        return dict(data)
