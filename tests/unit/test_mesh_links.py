"""The controller's mesh graph: path costs, feasible routes, what a lying router can do,
and the API that routers report to."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.controller_harness import Harness, error_code, make_harness
from umbranet.cli.main import app
from umbranet.client.controller import ControllerClient
from umbranet.controller.api import routes_mesh
from umbranet.controller.service.links import (
    HOP_COST,
    LOAD_COST_MAX,
    UNMEASURED_RTT_MS,
    LinkGraph,
    MeshPolicy,
    MeshRoute,
    RouterReport,
    load_cost,
    routes_for,
)


def _reports(
    edges: dict[tuple[str, str], float | None], services: dict[str, set[str]]
) -> dict[str, RouterReport]:
    """Both ends report each edge with the same RTT."""
    names = {n for edge in edges for n in edge} | set(services)
    reports = {n: RouterReport(frozenset(services.get(n, ())), {}, 0.0) for n in names}
    for (a, b), rtt in edges.items():
        reports[a].links[b] = rtt
        reports[b].links[a] = rtt
    return reports


def test_the_cheapest_path_by_measured_rtt_wins_and_costs_add_up() -> None:
    reports = _reports(
        {("a", "b"): 5.0, ("b", "d"): 5.0, ("a", "c"): 1.0, ("c", "d"): 1.0},
        {"d": {"echo"}},
    )
    routes = routes_for("a", reports)
    assert routes[0] == MeshRoute("echo", "c", 2 * (HOP_COST + 1.0))
    # b is 6 from d, a only 4: sending a dial to b could bring it back, so no route via b.
    assert [r.via for r in routes] == ["c"]


def test_admin_cost_steers_paths_away_from_a_router() -> None:
    reports = _reports(
        {("a", "b"): 1.0, ("b", "d"): 1.0, ("a", "c"): 1.0, ("c", "d"): 1.0}, {"d": {"echo"}}
    )
    first = routes_for("a", reports, {"b": 100.0})[0]
    assert first.via == "c"
    assert routes_for("a", reports, {"c": 100.0})[0].via == "b"


def test_an_unmeasured_link_counts_the_default_rtt() -> None:
    reports = _reports({("a", "b"): None}, {"b": {"echo"}})
    assert routes_for("a", reports) == [MeshRoute("echo", "b", HOP_COST + UNMEASURED_RTT_MS)]


def test_a_link_only_one_router_reports_is_not_a_path() -> None:
    # "evil" claims a link to "a" and hosts a service; "a" never confirmed the link.
    reports = _reports({}, {"evil": {"echo"}, "a": set()})
    reports["evil"].links["a"] = 0.0
    assert routes_for("a", reports) == []
    reports["a"].links["evil"] = 3.0  # now both ends say so: the larger RTT counts
    assert routes_for("a", reports) == [MeshRoute("echo", "evil", HOP_COST + 3.0)]


def test_a_service_bound_at_the_router_itself_gets_no_remote_route() -> None:
    reports = _reports({("a", "b"): 1.0}, {"a": {"echo"}, "b": {"echo"}})
    assert routes_for("a", reports) == []
    assert routes_for("b", reports) == []


def test_graph_expires_routers_that_stopped_reporting() -> None:
    graph = LinkGraph(stale_after=30.0)
    graph.report("b", ["echo"], {"a": 1.0}, now=0.0)
    assert graph.report("a", [], {"b": 1.0}, now=10.0) == [MeshRoute("echo", "b", 2.0)]
    assert graph.report("a", [], {"b": 1.0}, now=41.0) == []  # b silent for 41 s
    assert graph.statistics()["routers"] == 1


_NAMES = [f"r{i}" for i in range(7)]


@st.composite
def _meshes(draw: st.DrawFn) -> tuple[dict[tuple[str, str], float | None], set[str]]:
    pairs = [(a, b) for i, a in enumerate(_NAMES) for b in _NAMES[i + 1 :]]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs)))
    rtt = st.one_of(st.none(), st.floats(0.0, 200.0, allow_nan=False))
    edges = {pair: draw(rtt) for pair in chosen}
    hosts = draw(st.sets(st.sampled_from(_NAMES), min_size=1, max_size=3))
    return edges, hosts


_POLICIES = st.builds(
    MeshPolicy,
    router_costs=st.dictionaries(st.sampled_from(_NAMES), st.floats(0, 100)),
    link_costs=st.dictionaries(
        st.sets(st.sampled_from(_NAMES), min_size=2, max_size=2).map(frozenset), st.floats(0, 100)
    ),
    no_transit=st.frozensets(st.sampled_from(_NAMES)),
)


@settings(max_examples=200, deadline=None)
@given(_meshes(), _POLICIES, st.dictionaries(st.sampled_from(_NAMES), st.integers(0, 10**6)))
def test_following_any_installed_route_reaches_a_host_without_a_loop(
    mesh: tuple[dict[tuple[str, str], float | None], set[str]],
    policy: MeshPolicy,
    loads: dict[str, int],
) -> None:
    edges, hosts = mesh
    reports = _reports(edges, {h: {"svc"} for h in hosts})
    for name, circuits in loads.items():
        if name in reports:
            reports[name].circuits = circuits
    tables = {n: routes_for(n, reports, policy=policy) for n in reports}
    for start in reports:
        # Walk every route, not only the best: a router may fall back to any of them.
        frontier, seen_paths = [(start, (start,))], 0
        while frontier:
            node, path = frontier.pop()
            seen_paths += 1
            assert seen_paths < 10_000
            if node in hosts:
                continue
            for route in tables[node]:
                assert route.via not in path, f"loop {path} -> {route.via}"
                # A no-transit router is only ever the last hop.
                assert route.via not in policy.no_transit or route.via in hosts
                frontier.append((route.via, (*path, route.via)))
        best = [r.cost for r in tables[start]]
        assert best == sorted(best)


@pytest.fixture
def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    harnesses = make_harness(tmp_path)
    harness = next(harnesses)
    original = ControllerClient.__init__

    def in_process(self: ControllerClient, identity: Any, **options: Any) -> None:
        # The CLI's admin client reaches the in-process app instead of a socket.
        options.setdefault("transport", harness.transport(identity))
        original(self, identity, **options)

    monkeypatch.setattr(ControllerClient, "__init__", in_process)
    # Every report's effect at once: these tests check routes, not the rebuild pacing.
    monkeypatch.setattr(routes_mesh, "RECOMPUTE_EVERY", 0.0)
    yield harness
    harnesses.close()


def _router(h: Harness, name: str):  # type: ignore[no-untyped-def]
    token = h.client(h.admin).post("/v1/routers", json={"name": name}).json()["enrollment_token"]
    return h.enroll(token)


def test_routers_report_state_and_get_routes_through_confirmed_links(h: Harness) -> None:
    r1, r2 = _router(h, "r1"), _router(h, "r2")
    state = "/v1/routers/me/state"
    body = {"services": ["echo"], "links": [{"peer": r1.spiffe_id, "rtt_ms": 2.0}]}
    response = h.client(r2).post(state, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["routes"] == []
    body = {"services": [], "links": [{"peer": r2.spiffe_id, "rtt_ms": 1.0}]}
    response = h.client(r1).post(state, json=body)
    assert response.json()["routes"] == [
        {"service": "echo", "via": r2.spiffe_id, "cost": HOP_COST + 2.0}
    ]


def test_only_routers_report_mesh_state(h: Harness) -> None:
    alice = h.new_device("alice", ["eng"])
    response = h.client(alice).post("/v1/routers/me/state", json={"services": [], "links": []})
    assert (response.status_code, error_code(response)) == (403, "router_required")
    assert h.client(alice).get("/v1/routers/me/watch?wait=0").status_code == 403
    r1 = _router(h, "r1")
    too_many = {"services": ["s"] * 5000, "links": []}
    assert h.client(r1).post("/v1/routers/me/state", json=too_many).status_code == 422
    negative = {"services": [], "links": [], "circuits": -1}
    assert h.client(r1).post("/v1/routers/me/state", json=negative).status_code == 422
    # r1 says it links to r2; r2 has not confirmed yet: no routes.
    r2 = _router(h, "r2")
    one_sided = {"services": [], "links": [{"peer": r2.spiffe_id, "rtt_ms": 1.0}]}
    answer = h.client(r1).post("/v1/routers/me/state", json=one_sided).json()
    assert answer["routes"] == []
    quiet = h.client(r1).get(f"/v1/routers/me/watch?after={answer['version']}&wait=0.05")
    assert quiet.json() == {"version": answer["version"]}  # nothing moved: the same version
    # r2 confirms and hosts echo: r1's routes changed, so its watch answers at once.
    confirmed = {"services": ["echo"], "links": [{"peer": r1.spiffe_id, "rtt_ms": 1.0}]}
    h.client(r2).post("/v1/routers/me/state", json=confirmed)
    watched = h.client(r1).get(f"/v1/routers/me/watch?after={answer['version']}&wait=20")
    assert watched.json()["version"] > answer["version"]


def test_umbra_router_update_cost_steers_routes_away_from_a_router(h: Harness) -> None:
    r1, r2, r3 = _router(h, "r1"), _router(h, "r2"), _router(h, "r3")
    state = "/v1/routers/me/state"

    def report(who: Any, services: list[str], peers: list[Any]) -> list[str]:
        links = [{"peer": p.spiffe_id, "rtt_ms": 1.0} for p in peers]
        response = h.client(who).post(state, json={"services": services, "links": links})
        assert response.status_code == 200, response.text
        return [r["via"] for r in response.json()["routes"]]

    report(r2, ["echo"], [r1])
    report(r3, ["echo"], [r1])
    assert report(r1, [], [r2, r3]) == [r2.spiffe_id, r3.spiffe_id]  # a tie: by name

    result = CliRunner().invoke(
        app, ["--home", str(h.home), "router", "update", "r2", "--cost", "10", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["cost"] == 10.0
    assert report(r1, [], [r2, r3]) == [r3.spiffe_id, r2.spiffe_id]

    alice = h.new_device("alice", ["eng"])
    refused = h.client(alice).put("/v1/routers/r2/cost", json={"cost": 0})
    assert refused.status_code == 403
    unknown = h.client(h.admin).put("/v1/routers/nope/cost", json={"cost": 1})
    assert (unknown.status_code, error_code(unknown)) == (404, "unknown_router")
    negative = h.client(h.admin).put("/v1/routers/r2/cost", json={"cost": -1})
    assert negative.status_code == 422


def test_a_no_transit_router_is_never_a_middle_hop_but_still_a_first_and_last_one() -> None:
    # a - t - d is short; a - b - c - d is long. t carries no transit.
    reports = _reports(
        {("a", "t"): 1.0, ("t", "d"): 1.0, ("a", "b"): 5.0, ("b", "c"): 5.0, ("c", "d"): 5.0},
        {"d": {"echo"}, "t": {"local"}},
    )
    policy = MeshPolicy(no_transit=frozenset({"t"}))
    assert [r.via for r in routes_for("a", reports, policy=policy) if r.service == "echo"] == ["b"]
    assert [r.via for r in routes_for("a", reports)] == ["t", "t"]  # without it: the short one
    # t's own endpoints still dial out through it, and its hosts are still reached.
    assert [r.via for r in routes_for("t", reports, policy=policy) if r.service == "echo"] == ["d"]
    assert [r.via for r in routes_for("a", reports, policy=policy) if r.service == "local"] == ["t"]


def test_a_link_cost_steers_paths_off_that_link_only() -> None:
    reports = _reports(
        {("a", "b"): 1.0, ("b", "d"): 1.0, ("a", "c"): 1.0, ("c", "d"): 1.0}, {"d": {"echo"}}
    )
    assert routes_for("a", reports)[0].via == "b"  # a tie, by name
    policy = MeshPolicy(link_costs={frozenset(("b", "d")): 10.0})
    assert routes_for("a", reports, policy=policy)[0].via == "c"


def test_load_shifts_near_ties_and_never_more_than_its_cap() -> None:
    reports = _reports(
        {("a", "b"): 1.0, ("b", "d"): 1.0, ("a", "c"): 1.5, ("c", "d"): 1.0}, {"d": {"echo"}}
    )
    assert routes_for("a", reports)[0].via == "b"
    reports["b"].circuits = 5000  # busy: the slightly slower c wins
    assert routes_for("a", reports)[0].via == "c"
    assert load_cost(10**9) <= LOAD_COST_MAX and load_cost(0) == 0.0
    reports["c"].links["a"] = reports["a"].links["c"] = 50.0  # far: load cannot outweigh it
    assert routes_for("a", reports)[0].via == "b"


def test_the_graph_ignores_rtt_noise_and_caches_paths_until_something_moves() -> None:
    graph = LinkGraph()
    graph.report("b", ["echo"], {"a": 10.0}, now=0.0)
    graph.report("a", [], {"b": 10.0}, now=0.0)
    version, computed = graph.version, graph.computed
    for step in range(20):  # jitter within a fifth: nothing to recompute
        routes = graph.report("a", [], {"b": 10.0 + (step % 3) * 0.5}, now=1.0)
    assert (graph.version, graph.computed) == (version, computed)
    assert routes == [MeshRoute("echo", "b", HOP_COST + 10.0)]
    seen: list[int] = []
    stop = graph.watch(seen.append)
    routes = graph.report("a", [], {"b": 30.0}, now=2.0)  # degraded: news
    assert graph.version == version + 1 and seen == [graph.version]
    assert routes == [MeshRoute("echo", "b", HOP_COST + 30.0)]
    stop()
    graph.report("a", [], {}, now=3.0)
    assert seen == [version + 1]


def test_operators_settings_are_stored_and_shape_routes(h: Harness) -> None:
    r1, r2, r3 = _router(h, "r1"), _router(h, "r2"), _router(h, "r3")
    state = "/v1/routers/me/state"

    def report(who: Any, services: list[str], peers: list[Any]) -> dict[str, Any]:
        links = [{"peer": p.spiffe_id, "rtt_ms": 1.0} for p in peers]
        body = {"services": services, "links": links, "circuits": 3}
        response = h.client(who).post(state, json=body)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    admin = h.client(h.admin)
    h.client(h.admin).post("/v1/services", json={"name": "echo"})
    # r1 - r2 - r3 and r1 - r3: r3 hosts echo.
    report(r2, [], [r1, r3])
    report(r3, ["echo"], [r1, r2])
    assert [r["via"] for r in report(r1, [], [r2, r3])["routes"]] == [r3.spiffe_id]

    response = admin.put("/v1/routers/r1/links/r3/cost", json={"cost": 50})
    assert response.status_code == 200, response.text
    # Around the costly link first; the direct one stays as a (loop-free) fallback.
    vias = [r["via"] for r in report(r1, [], [r2, r3])["routes"]]
    assert vias == [r2.spiffe_id, r3.spiffe_id]

    result = CliRunner().invoke(
        app,
        ["--home", str(h.home), "router", "update", "r2", "--no-transit", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["no_transit"] is True
    # The only cheap path crossed r2: now the expensive direct link is the one.
    assert [r["via"] for r in report(r1, [], [r2, r3])["routes"]] == [r3.spiffe_id]
    # r2 hears it in its own answer, so it refuses transit itself (router/switch.py).
    assert report(r2, [], [r1, r3])["no_transit"] is True
    assert report(r1, [], [r2, r3])["no_transit"] is False

    result = CliRunner().invoke(
        app, ["--home", str(h.home), "service", "update", "echo", "--strategy", "weighted"]
    )
    assert result.exit_code == 0, result.output
    assert report(r3, ["echo"], [r1, r2])["strategies"] == {"echo": "weighted"}

    # Stored: a fresh graph (a restarted controller) reads the same settings back.
    h.app.state.link_graph = None
    report(r2, [], [r1, r3])
    report(r3, ["echo"], [r1, r2])
    assert [r["via"] for r in report(r1, [], [r2, r3])["routes"]] == [r3.spiffe_id]
    mesh = admin.get("/v1/mesh").json()
    assert mesh["settings"]["no_transit"] == [r2.spiffe_id]
    assert mesh["routers"][r1.spiffe_id]["circuits"] == 3

    bad = admin.put("/v1/services/echo/strategy", json={"strategy": "fastest"})
    assert bad.status_code == 422
    same = admin.put("/v1/routers/r1/links/r1/cost", json={"cost": 1})
    assert (same.status_code, error_code(same)) == (400, "bad_link")
    alice = h.new_device("alice", ["eng"])
    assert h.client(alice).get("/v1/mesh").status_code == 403
    assert h.client(alice).put("/v1/routers/r1/links/r3/cost", json={"cost": 1}).status_code == 403


def test_a_burst_of_changes_is_built_once_per_interval_and_never_lost() -> None:
    graph = LinkGraph(recompute_every=1.0)
    graph.report("b", ["echo"], {"a": 1.0}, now=0.0, mono=100.0)
    assert graph.report("a", [], {"b": 1.0}, now=0.0, mono=100.1) == []  # still paced
    built = graph.version
    graph.refresh(100.5)
    assert graph.version == built  # not yet due
    graph.refresh(101.0)  # a watch wakes: the waiting change is built without a report
    assert graph.version == built + 1
    assert graph.report("a", [], {"b": 1.0}, now=0.0, mono=101.1) == [MeshRoute("echo", "b", 2.0)]
    for step in range(10):  # a flapping link: ten changes within one interval
        graph.report("a", [], {"b": 1.0} if step % 2 else {}, now=0.0, mono=101.2 + step / 100)
    assert graph.version == built + 1  # all within the interval: none built yet
    graph.refresh(102.0)
    assert graph.version == built + 2  # one rebuild for the whole burst, with its last state
    assert graph.report("a", [], {"b": 1.0}, now=0.0, mono=102.1) == [MeshRoute("echo", "b", 2.0)]


def test_umbra_router_path_shows_each_hop_with_its_link_rtt(h: Harness) -> None:
    r1, r2, r3 = _router(h, "r1"), _router(h, "r2"), _router(h, "r3")
    state = "/v1/routers/me/state"

    def report(who: Any, services: list[str], peers: list[tuple[Any, float]]) -> None:
        links = [{"peer": p.spiffe_id, "rtt_ms": rtt} for p, rtt in peers]
        body = {"services": services, "links": links}
        assert h.client(who).post(state, json=body).status_code == 200

    report(r1, [], [(r2, 2.0)])
    report(r2, [], [(r1, 3.0), (r3, 1.0)])
    report(r3, ["echo"], [(r2, 1.0)])
    result = CliRunner().invoke(
        app, ["--home", str(h.home), "router", "path", "echo", "--from", "r1", "--json"]
    )
    assert result.exit_code == 0, result.output
    hops = json.loads(result.output)["hops"]
    assert [(x["name"], x["rtt_ms"]) for x in hops] == [("r1", None), ("r2", 3.0), ("r3", 1.0)]
    text = CliRunner().invoke(
        app, ["--home", str(h.home), "router", "path", "echo", "--from", "r1"]
    )
    assert "r1 -> r2 (3.00 ms) -> r3 (1.00 ms)" in text.output
    nowhere = h.client(h.admin).get("/v1/mesh/path", params={"service": "nope", "from": "r1"})
    assert [x["router"] for x in nowhere.json()["hops"]] == [r1.spiffe_id, None]
    alice = h.new_device("alice", ["eng"])
    assert h.client(alice).get("/v1/mesh/path?service=echo&from=r1").status_code == 403


def test_a_watch_wakes_only_the_routers_whose_answer_changed() -> None:
    graph = LinkGraph()
    graph.report("b", ["echo"], {"a": 1.0, "c": 1.0}, now=0.0)
    graph.report("a", [], {"b": 1.0}, now=0.0)
    graph.report("c", [], {"b": 1.0}, now=0.0)
    assert not graph.changed_for("a") and not graph.changed_for("c")
    graph.report("c", ["other"], {"b": 1.0}, now=0.0)  # a service at c: a's routes move
    assert graph.changed_for("a")
    graph.report("a", [], {"b": 1.0}, now=0.0)
    before = graph.version
    graph.report("d", [], {}, now=0.0)  # a new router, linked to nobody yet
    assert graph.version == before + 1 and not graph.changed_for("a")
    graph.set_policy(MeshPolicy(strategies={"echo": "random"}))
    assert graph.changed_for("b") and not graph.changed_for("a")  # b hosts echo
    assert graph.changed_for("nobody")  # never answered: report


def test_a_service_limited_to_some_transit_routers_crosses_only_those() -> None:
    # a - b - d is short, a - c - d is long; echo may cross c only.
    reports = _reports(
        {("a", "b"): 1.0, ("b", "d"): 1.0, ("a", "c"): 5.0, ("c", "d"): 5.0},
        {"d": {"echo", "other"}},
    )
    policy = MeshPolicy(transit_only={"echo": frozenset({"c"})})
    routes = routes_for("a", reports, policy=policy)
    assert [r.via for r in routes if r.service == "echo"] == ["c"]
    assert [r.via for r in routes if r.service == "other"] == ["b"]  # others are not limited
    # The first and the last router are never limited: b's own endpoints still reach d.
    assert [r.via for r in routes_for("b", reports, policy=policy)] == ["d", "d"]
    nowhere = MeshPolicy(transit_only={"echo": frozenset()})
    assert [r.service for r in routes_for("a", reports, policy=nowhere)] == ["other"]


def test_umbra_service_update_transit_limits_the_routers_a_service_crosses(h: Harness) -> None:
    r1, r2, r3, r4 = (_router(h, f"r{i}") for i in range(1, 5))
    state = "/v1/routers/me/state"

    def report(who: Any, services: list[str], peers: list[tuple[Any, float]]) -> list[str]:
        links = [{"peer": p.spiffe_id, "rtt_ms": rtt} for p, rtt in peers]
        response = h.client(who).post(state, json={"services": services, "links": links})
        assert response.status_code == 200, response.text
        return [r["via"] for r in response.json()["routes"]]

    h.client(h.admin).post("/v1/services", json={"name": "echo"})
    # r1 - r2 - r4 (fast) and r1 - r3 - r4 (slow); r4 hosts echo.
    report(r2, [], [(r1, 1.0), (r4, 1.0)])
    report(r3, [], [(r1, 9.0), (r4, 9.0)])
    report(r4, ["echo"], [(r2, 1.0), (r3, 9.0)])
    assert report(r1, [], [(r2, 1.0), (r3, 9.0)]) == [r2.spiffe_id]
    home = ["--home", str(h.home), "service", "update", "echo"]
    result = CliRunner().invoke(app, [*home, "--transit", "r3"])
    assert result.exit_code == 0, result.output
    assert report(r1, [], [(r2, 1.0), (r3, 9.0)]) == [r3.spiffe_id]
    typo = CliRunner().invoke(app, [*home, "--transit", "r9"])
    assert typo.exit_code != 0 and "unknown_router" in typo.output + str(typo.stderr_bytes)
    result = CliRunner().invoke(app, [*home, "--any-transit"])
    assert result.exit_code == 0, result.output
    assert report(r1, [], [(r2, 1.0), (r3, 9.0)]) == [r2.spiffe_id]


def test_a_router_with_only_a_standby_host_is_routed_to_a_primary_elsewhere(h: Harness) -> None:
    r1, r2 = _router(h, "r1"), _router(h, "r2")
    state = "/v1/routers/me/state"

    def report(who: Any, peer: Any, standby: dict[str, int] | None = None) -> Any:
        body: dict[str, Any] = {
            "services": ["echo"],
            "links": [{"peer": peer.spiffe_id, "rtt_ms": 1.0}],
        }
        if standby is not None:
            body["standby"] = standby
        return h.client(who).post(state, json=body)

    h.client(h.admin).post("/v1/services", json={"name": "echo"})
    assert report(r2, r1).status_code == 200  # a primary of echo at r2
    answer = report(r1, r2, {"echo": 1}).json()  # only a standby at r1
    assert [(r["service"], r["via"]) for r in answer["routes"]] == [("echo", r2.spiffe_id)]
    assert report(r2, r1).json()["routes"] == []  # the primary's router keeps its dials
    # Both standbys: each keeps its own (no route leads to a host no better than its own).
    assert report(r2, r1, {"echo": 1}).status_code == 200
    assert report(r1, r2, {"echo": 1}).json()["routes"] == []
    # A rank is 1..9 (0 is a primary: no entry at all).
    for bad in ({"echo": 0}, {"echo": 10}, {"echo": "standby"}):
        assert report(r1, r2, bad).status_code == 422


def test_a_dialer_sees_the_path_to_a_service_it_holds_a_dial_ticket_for(h: Harness) -> None:
    r1, r2 = _router(h, "r1"), _router(h, "r2")
    admin = h.client(h.admin)
    admin.post("/v1/services", json={"name": "echo", "dial_attributes": ["eng"]})
    alice = h.client(h.new_device("alice", ["eng"]))
    mallory = h.client(h.new_device("mallory", ["eng"]))
    state = "/v1/routers/me/state"
    h.client(r2).post(
        state, json={"services": ["echo"], "links": [{"peer": r1.spiffe_id, "rtt_ms": 3.0}]}
    )
    h.client(r1).post(
        state, json={"services": [], "links": [{"peer": r2.spiffe_id, "rtt_ms": 2.0}]}
    )
    ticket = alice.post("/v1/tickets", json={"service": "echo", "action": "dial"}).json()["ticket"]

    response = alice.post("/v1/me/path", json={"ticket": ticket, "from": "r1"})
    assert response.status_code == 200, response.text
    path = response.json()
    assert path["service"] == "echo"
    assert [(hop["name"], hop["rtt_ms"]) for hop in path["hops"]] == [("r1", None), ("r2", 3.0)]

    # The ticket is the proof: someone else's, a bind ticket or garbage shows nothing.
    assert (
        error_code(mallory.post("/v1/me/path", json={"ticket": ticket, "from": "r1"}))
        == "bad_ticket"
    )
    assert (
        error_code(alice.post("/v1/me/path", json={"ticket": "x" * 40, "from": "r1"}))
        == "bad_ticket"
    )
    unknown = alice.post("/v1/me/path", json={"ticket": ticket, "from": "r9"})
    assert unknown.status_code == 404 and error_code(unknown) == "unknown_router"
