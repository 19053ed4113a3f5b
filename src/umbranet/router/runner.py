"""Running a router as a process: serve, register with the controller, renew, stop cleanly.

The router works without the controller (tickets are checked offline), so a controller that
is down delays registration and renewal but never stops the data plane; both are retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import Any

from umbranet.aio.metrics_listener import parse_listen
from umbranet.aio.stun_server import StunServer
from umbranet.client.controller import ControllerClient, ControllerError
from umbranet.client.current import CurrentClient
from umbranet.client.follow import follow_events, renew_at_half_life
from umbranet.clock import system_clock
from umbranet.pki import IdentityFile
from umbranet.router.metrics import serve_metrics
from umbranet.router.peers import MeshAnswer, PeerAddress, Peers
from umbranet.router.quotas import SwitchLimits
from umbranet.router.server import Router, RouterConfig

log = logging.getLogger("umbranet.router")

RETRY_SECONDS = 5.0
OFFLINE_GRACE = 3600.0
"""Seconds of controller outage during which circuits past their ticket stay up (see
`revalidate_forever` and docs/mesh.md)."""


async def run_router(
    identity_path: Path,
    listen: str,
    advertise: str | None = None,
    ready: asyncio.Event | None = None,
    *,
    metrics_listen: str | None = None,
    limits: SwitchLimits | None = None,
    stun_listen: str | None = None,
    no_transit: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM (or cancellation); with `metrics_listen` (``HOST:PORT`` or a
    loopback ``PORT``), also serve ``GET /metrics`` there; with `stun_listen` (``HOST:PORT``),
    answer STUN binding requests there and announce it to the controller."""
    identity = IdentityFile.load(identity_path)
    host, _, port = listen.rpartition(":")
    config = RouterConfig(identity, host=host.strip("[]") or "127.0.0.1", port=int(port))
    if limits is not None:
        config.limits = limits
    config.no_transit = no_transit
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    stun_box: list[StunServer] = []
    async with (
        Router(config) as router,
        serve_metrics(lambda: with_stun(router.statistics(), stun_box), metrics_listen) as m,
        ControllerMesh(router) as mesh,
        Peers(router, mesh),
        _stun(stun_listen) as stun,
    ):
        if stun is not None:
            stun_box.append(stun)
        address = advertise or router.address
        print(f"router {router.name} listening on {router.address}", flush=True)
        if m is not None:
            print(f"router metrics on http://{m.address}/metrics", flush=True)
        if stun is not None:
            print(f"router STUN on {stun.address}", flush=True)
        if ready is not None:
            ready.set()
        tasks = [
            loop.create_task(_keep_registered(router, identity_path, address)),
            loop.create_task(follow_controller(router)),
            loop.create_task(revalidate_forever(router)),
        ]
        if stun is not None:
            tasks.append(loop.create_task(_announce_stun(router, stun, address)))
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def with_stun(stats: Mapping[str, Any], stun: list[StunServer]) -> Mapping[str, Any]:
    """The router's statistics with its STUN port's counts: answered requests as the event
    ``stun_binding_requests``, each kind of ignored datagram as the refusal ``stun_<why>``."""
    if not stun:
        return stats
    counters = dict(stats.get("counters") or {})
    for name, value in stun[0].statistics().items():
        key = "stun_binding_requests" if name == "binding_requests" else "stun_" + name[5:]
        if name.startswith("drop_") or name == "binding_requests":
            counters[key] = value
    return {**stats, "counters": counters}


@contextlib.asynccontextmanager
async def _stun(listen: str | None) -> AsyncIterator[StunServer | None]:
    if listen is None:
        yield None
        return
    host, port = parse_listen(listen)
    async with StunServer(host, port) as server:
        yield server


async def _announce_stun(router: Router, stun: StunServer, advertise: str) -> None:
    """Tell the controller where we answer STUN (endpoints learn it from `/v1/network/nat`);
    retried until it lands, since the controller may start after us. A wildcard bind is
    announced with the host of the router's advertised address."""
    host, port = parse_listen(stun.address)
    if host in {"0.0.0.0", "::"}:
        host = parse_listen(advertise)[0]
    while True:
        try:
            async with ControllerClient(router.identity) as client:
                await client.set_router_stun(host, port)
            log.info("STUN address %s announced", stun.address)
            return
        except (ControllerError, OSError) as exc:
            log.warning("announcing STUN failed (%s); retrying in %.0fs", exc, RETRY_SECONDS)
            await asyncio.sleep(RETRY_SECONDS)


class ControllerMesh:
    """`MeshControl` over the controller's HTTP API, as the router's current identity (a
    renewed certificate gets a new client)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._current = CurrentClient(lambda: router.identity)

    async def __aenter__(self) -> ControllerMesh:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._current.aclose()

    async def peers(self) -> list[PeerAddress]:
        routers = await (await self._current.get()).routers()
        return [PeerAddress(r.spiffe_id, r.address) for r in routers if r.address is not None]

    async def report(
        self,
        services: Collection[str],
        links: Mapping[str, float | None],
        circuits: int,
        standby: Mapping[str, int],
    ) -> MeshAnswer:
        client = await self._current.get()
        routes = await client.router_state(services, links, circuits, standby)
        answer = client.mesh_answer
        return MeshAnswer(
            routes,
            dict(answer.get("strategies", {})),
            answer.get("version", 0),
            bool(answer.get("no_transit", False)),
        )

    async def watch(self, after: int) -> int:
        return await (await self._current.get()).watch_mesh(after)


async def _keep_registered(router: Router, identity_path: Path, address: str) -> None:
    """Register the advertised address (retried until the controller answers), then renew the
    certificate at half-life with the follower's renewal loop."""
    while True:
        try:
            async with ControllerClient(router.identity) as client:
                await client.register_router(address)
            log.info("registered with the controller as %s", address)
            break
        except (ControllerError, OSError) as exc:
            log.warning("controller unavailable (%s); retrying in %.0fs", exc, RETRY_SECONDS)
            await asyncio.sleep(RETRY_SECONDS)

    async def renew() -> None:
        async with ControllerClient(router.identity) as client:
            renewed = await client.renew()
        renewed.save(identity_path)
        router.renew(renewed)
        log.info("certificate renewed until %s", renewed.certificate.not_valid_after_utc)

    def failed(exc: Exception) -> None:
        log.warning("certificate renewal failed (%s); retrying in %.0fs", exc, RETRY_SECONDS)

    await renew_at_half_life(
        lambda: router.identity, renew, system_clock, retry=lambda: RETRY_SECONDS, failed=failed
    )


async def revalidate_forever(
    router: Router, interval: float = 30.0, offline_grace: float | None = None
) -> None:
    """Every `interval`, re-validate circuits whose ticket expired (see
    `Router.revalidate_expired`); a controller that answers with errors closes them (fail
    closed). A controller that cannot be reached at all defers the round, for at most
    `offline_grace` seconds of outage (`OFFLINE_GRACE`): no revocation can be made while it
    is away, and the ones made just before are applied by the re-check of every grant that
    follows the event stream's reconnect. Past the grace, rounds run and fail closed."""
    grace = OFFLINE_GRACE if offline_grace is None else offline_grace
    loop = asyncio.get_running_loop()
    away_since: float | None = None
    while True:
        await asyncio.sleep(interval)
        try:
            async with ControllerClient(router.identity) as client:
                try:
                    await client.bundle()  # is anyone there?
                    away_since = None
                except ControllerError as exc:
                    if exc.code != "unreachable":
                        raise
                    away_since = loop.time() if away_since is None else away_since
                    if loop.time() - away_since < grace:
                        router.switch.counters["revalidation_deferred"] += 1
                        log.warning("re-validation deferred: the controller is unreachable")
                        continue

                async def recheck(grants: list[tuple[str, str, str]]) -> dict[int, str]:
                    _epoch, denied = await client.recheck(grants)
                    return denied

                await router.revalidate_expired(recheck)
        except (ControllerError, OSError) as exc:
            log.warning("re-validating expired circuits: %s", exc)


async def follow_controller(router: Router) -> None:
    """Follow the controller's event stream; apply every new revocation epoch at once.

    An ``epoch`` event that names ``identities`` (one endpoint's posture moved) re-checks
    only their grants; ``hello`` (after every reconnect) re-checks everything, since events
    may have been missed.
    """
    current: list[ControllerClient] = []

    async def events() -> AsyncIterator[tuple[str, dict[str, Any]]]:
        async with ControllerClient(router.identity) as client:
            current[:] = [client]
            async for event in client.events():
                yield event

    async def recheck(grants: list[tuple[str, str, str]]) -> dict[int, str]:
        _epoch, denied = await current[0].recheck(grants)
        return denied

    async def handle(name: str, data: dict[str, Any]) -> None:
        epoch = data.get("epoch")
        version = data.get("bundle_version")
        if isinstance(version, int) and version > router.identity.bundle.version:
            refreshed = await current[0].refresh_bundle()
            if refreshed is not None:
                router.renew(refreshed)
                log.info("trust bundle updated to version %d", version)
        if name in ("hello", "epoch") and isinstance(epoch, int):
            scope = event_identities(data) if name == "epoch" else None
            await router.apply_epoch(epoch, recheck, scope, event_revoked_keys(data))

    await follow_events(
        events, handle, errors=(ControllerError, OSError), max_backoff=RETRY_SECONDS
    )


MAX_EVENT_IDENTITIES = 64


def event_identities(data: Mapping[str, Any]) -> list[str] | None:
    """The SPIFFE IDs an epoch event is limited to, or None (re-check everything).

    Anything malformed or too long means "everything": re-checking too much costs time,
    re-checking too little would keep a revoked grant alive.
    """
    value = data.get("identities")
    if (
        isinstance(value, list)
        and 0 < len(value) <= MAX_EVENT_IDENTITIES
        and all(isinstance(v, str) and v.startswith("spiffe://") for v in value)
    ):
        return list(value)
    return None


MAX_REVOKED_KEYS = 1024


def event_revoked_keys(data: Mapping[str, Any]) -> list[str]:
    """Certificate key fingerprints the event says were revoked (malformed ones skipped)."""
    value = data.get("revoked_keys")
    if not isinstance(value, list):
        return []
    return [
        v
        for v in value[:MAX_REVOKED_KEYS]
        if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)
    ]
