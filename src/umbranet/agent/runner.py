"""The agent: one identity, its loopback intercepts, its hosted services and its local API.

`Agent` owns everything as an ``async with`` object: the SDK Context (links to routers,
tickets, certificate renewal), the `Interceptor` (services we may dial), the `Hoster`
(services we may bind that have a host address) and the `LocalApiServer`. It asks the
controller what this identity may do (``GET /v1/me``) at start and whenever the controller
announces a new epoch (a policy change, a deleted service, a disabled or revoked identity:
the SDK context follows the event stream, `Context.wait_epoch`), and opens or closes
listeners and bindings to match. A slow safety poll (``refresh_interval``, 300 s by default)
catches anything an interrupted event stream missed. All calls go through one long-lived
controller client (`CurrentClient`), remade only when a renewal replaces the identity.

A controller that cannot be reached changes nothing (flows keep going; the next refresh
retries sooner); a controller that refuses the identity (disabled: 401/403) withdraws
everything. With network mode (``--tun``) each refresh also fetches the filtered view,
publishes the WireGuard port, and hands both to `TunMode`, which follows them, so a peer that
may no longer talk to us loses its key, route and grant within a moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from umbranet.agent.config import AgentConfig, ConfigError, prepare_state_dir
from umbranet.agent.host import Hoster
from umbranet.agent.intercept import Interceptor, PortBook
from umbranet.agent.localapi import ApiError, LocalApiServer, Request
from umbranet.agent.peeruid import LocalUsers
from umbranet.agent.rootmode import RootMode
from umbranet.agent.routerlinks import RouterLinks
from umbranet.agent.stats import Counters
from umbranet.agent.tunmode import TunMode
from umbranet.agent.whois import WhoisTable, parse_address
from umbranet.agent.workload import WorkloadEndpoint
from umbranet.client.controller import ControllerClient, ControllerError, RouterAddress
from umbranet.client.current import CurrentClient
from umbranet.client.transport import mark_controller_sockets
from umbranet.pki import IdentityFile
from umbranet.pki.tickets import Action
from umbranet.proto.relay_choice import rank_relays
from umbranet.sdk import Context, Stream, UmbraError
from umbranet.sdk.grants import Grant

__all__ = ["Agent", "run_agent"]

log = logging.getLogger("umbranet.agent")

_RETRY_AFTER_FAILURE = 5.0
_REPAIR_INTERVAL = 1.0
_MAX_PINGS = 10
_PROBE_LINGER = 5.0
_STATUS_BY_CODE = {"not_authorized": 403, "identity_disabled": 403, "unknown_service": 404}


class Agent:
    """``async with Agent(config) as agent: await agent.wait_stopped()``."""

    def __init__(
        self,
        config: AgentConfig,
        context: Context | None = None,
        controller: Callable[[IdentityFile], ControllerClient] = ControllerClient,
    ) -> None:
        self.config = config
        self._given_context = context
        self.counters = Counters()
        self.whois = WhoisTable()
        self.started_at = datetime.now(UTC)
        self.last_refresh: datetime | None = None
        self.refresh_error: str | None = None
        self.routers: list[RouterAddress] = []
        self.unhosted: list[str] = []
        self.root: RootMode | None = None
        self.tun: TunMode | None = None
        self.overlay: dict[str, str | None] = {"ipv4": None, "ipv6": None}
        self.intercept_names: dict[str, list[str]] = {}
        self._lock = asyncio.Lock()
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.workload: WorkloadEndpoint | None = None
        self.api = LocalApiServer(config.socket_path, self.handle, self.counters)
        # One client for every refresh, following the context's identity across renewals.
        self.controller = CurrentClient(lambda: self.context.identity, controller)

    async def __aenter__(self) -> Agent:
        config = self.config
        prepare_state_dir(config.state_dir)
        await self.api.start()
        try:
            _write_pidfile(config)
            self.context = self._given_context or Context.from_file(config.identity)
            if config.tun is not None:
                # Before any link opens: with an exit node they keep out of the tunnel.
                self.context.link_mark = config.tun.underlay_mark
                mark_controller_sockets(config.tun.underlay_mark)
            await self.context.__aenter__()
            # Links to the best few routers by RTT, not to every one (`routerlinks.py`).
            self.router_links = RouterLinks(self.context, self.counters)
            book = PortBook(config.ports_file, config.ports)
            self.interceptor = Interceptor(
                self.context,
                book,
                self.whois,
                self.counters,
                config.listen_base,
                users=LocalUsers(os.getuid(), config.allow_uids, config.allow_any_user),
            )
            self.hoster = Hoster(self.context, self.whois, self.counters)
            if config.root is not None:
                root = RootMode(
                    config.root, config.state_dir, self.context, self.whois, self.counters
                )
                await root.start()
                self.root = root
            if config.tun is not None:
                tun = TunMode(config.tun, config.state_dir, self.context.identity, self.counters)
                self.tun = tun
                await tun.prepare()
            await self.refresh()
            workload = WorkloadEndpoint(self.context, config.workload_socket_path)
            await workload.start()
            self.workload = workload
        except BaseException:
            if self.root is not None:
                await self.root.close()
            if self.tun is not None:
                await self.tun.close()
            await self.controller.aclose()
            await self.api.close()
            _remove_pidfile(config)
            raise
        self._spawn(self._refresh_forever())
        self._spawn(self._refresh_on_epoch())
        self._spawn(self._repair_forever())
        self._spawn(self.router_links.run())
        log.info(
            "agent up as %s (local API %s)", self.context.identity.spiffe_id, config.socket_path
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop everything: listeners, bindings, flows, links, the API; remove the pidfile."""
        self._stopped.set()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.root is not None:
            await self.root.close()
        if self.tun is not None:
            await self.tun.close()
        await self.interceptor.close()
        await self.hoster.close()
        await self.api.close()
        if self.workload is not None:
            await self.workload.close()
        await self.controller.aclose()
        await self.context.close()
        if self.config.tun is not None:
            mark_controller_sockets(None)
        _remove_pidfile(self.config)
        log.info("agent stopped")

    def stop(self) -> None:
        """Ask `wait_stopped` to return (signal handlers call this)."""
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # -- following the controller --------------------------------------------------------

    async def refresh(self) -> bool:
        """Match listeners and bindings to what the controller allows now; False on failure."""
        async with self._lock:
            try:
                client = await self.controller.get()
                me = await client.me()
                routers = await client.routers()
                view: dict[str, Any] = {}
                if self.tun is not None:
                    view = await client.view()
                    if self.tun.published is None:  # once: the port does not move
                        await self.tun.advertise(client)
                        self.tun.published = await client.set_network_endpoint(
                            self.tun.port, self.tun.settings.endpoint_host
                        )
            except ControllerError as exc:
                self.refresh_error = str(exc)
                self.counters.add(f"refresh_failed.{exc.code}")
                log.warning("refresh from the controller failed: %r", str(exc))
                if exc.status in (401, 403):
                    await self._apply({}, {})
                    if self.tun is not None:
                        await self.tun.apply(None, None, {})
                return False
            self.overlay = {"ipv4": me.ipv4, "ipv6": me.ipv6}
            if self.tun is not None:
                try:
                    # The relay link goes to the router this device measures fastest.
                    rtt = self.context.statistics().get("router_rtt_ms", {})
                    relays = rank_relays([r.address for r in routers if r.address], rtt)
                    await self.tun.apply(me.ipv4, me.ipv6, view, relays)
                except ConfigError as exc:
                    if self.last_refresh is None:
                        raise  # at start: `umbra up --tun` fails with the reason
                    self.counters.add(f"tun_failed.{exc.code}")
                    log.warning("network mode: %s", exc)
            self.routers = [
                RouterAddress(name=r.name, spiffe_id=r.spiffe_id, address=r.address)
                for r in routers
                if r.address
            ]
            dial = {
                s.name: [i.port for i in s.intercepts] for s in me.services if "dial" in s.actions
            }
            bindable = [s for s in me.services if "bind" in s.actions]
            host = {s.name: s.host_address for s in bindable if s.host_address}
            self.intercept_names = {
                s.name: [i.host for i in s.intercepts] for s in me.services if "dial" in s.actions
            }
            self.unhosted = sorted(s.name for s in bindable if not s.host_address)
            await self._apply(dial, host)
            self.last_refresh, self.refresh_error = datetime.now(UTC), None
            self.router_links.update([r.address for r in self.routers if r.address])
            return True

    async def _apply(self, dial: dict[str, list[int]], host: dict[str, str]) -> None:
        for name in set(self.interceptor.listeners) - set(dial):
            await self.interceptor.remove(name)
        for name, ports in sorted(dial.items()):
            await self.interceptor.ensure(name, ports)
        for name in set(self.hoster.hosted) - set(host):
            await self.hoster.remove(name)
        for name, address in sorted(host.items()):
            self.hoster.ensure(name, address)
        if self.root is not None:
            await self.root.update({n: self.intercept_names.get(n, []) for n in dial}, dial)

    async def _refresh_forever(self) -> None:
        """The safety poll: events drive refreshes; this catches what a broken stream missed
        (and retries a failed refresh sooner)."""
        ok = True
        while not self._stopped.is_set():
            interval = self.config.refresh_interval
            await asyncio.sleep(interval if ok else min(interval, _RETRY_AFTER_FAILURE))
            ok = await self.refresh()

    async def _refresh_on_epoch(self) -> None:
        """Refresh whenever the controller announces a new epoch (the SDK context's follower
        keeps the event stream; several epochs during one refresh make one more refresh)."""
        seen = self.context.epoch
        while not self._stopped.is_set():
            seen = await self.context.wait_epoch(seen)
            self.counters.add("epoch_refresh")
            await self.refresh()

    async def _repair_forever(self) -> None:
        """What breaks between refreshes is mended within a second or two, not at the next
        refresh: a listener whose port was taken binds once it is free, a relay link whose
        router went away moves to another router."""
        while not self._stopped.is_set():
            await asyncio.sleep(_REPAIR_INTERVAL)
            async with self._lock:
                await self.interceptor.retry_unbound()
                if self.tun is not None:
                    await self.tun.keep_relay()

    # -- the local API ----------------------------------------------------------------------

    async def handle(self, request: Request) -> tuple[int, Any]:
        """Route one local API request."""
        routes: dict[str, dict[str, Callable[[Request], Any]]] = {
            "/v1/status": {"GET": lambda _r: self.status()},
            "/v1/whois": {"GET": self._whois_route},
            "/v1/ping": {"POST": self._ping_route},
            "/v1/refresh": {"POST": self._refresh_route},
            "/v1/renew": {"POST": self._renew_route},
        }
        methods = routes.get(request.path)
        if methods is None:
            raise ApiError(404, "not_found", f"no such path: {request.path}")
        route = methods.get(request.method)
        if route is None:
            raise ApiError(405, "method_not_allowed", f"use {', '.join(methods)}")
        result = route(request)
        if asyncio.iscoroutine(result):
            result = await result
        return 200, result

    def status(self) -> dict[str, Any]:
        """What ``umbra status`` shows."""
        identity = self.context.identity
        sdk = self.context.statistics()
        links: dict[str, bool] = sdk["routers"]
        rtts: dict[str, float | None] = sdk.get("router_rtt_ms", {})
        return {
            "identity": {
                "name": identity.name,
                "spiffe_id": identity.spiffe_id,
                "cert_not_after": identity.certificate.not_valid_after_utc.isoformat(),
                "controller_url": identity.controller_url,
            },
            "agent": {
                "pid": os.getpid(),
                "started_at": self.started_at.isoformat(),
                "socket": str(self.config.socket_path),
                "state_dir": str(self.config.state_dir),
            },
            "workload_api": self.workload.statistics() if self.workload is not None else None,
            "controller": {
                "last_refresh": self.last_refresh.isoformat() if self.last_refresh else None,
                "error": self.refresh_error,
            },
            "routers": [
                {
                    "name": r.name,
                    "address": r.address,
                    "link": "up" if links.get(r.address) else "not connected",
                    "rtt_ms": rtts.get(r.address or ""),
                    "home": r.address is not None and r.address == sdk.get("home_router"),
                }
                for r in self.routers
            ],
            "dial": self.interceptor.snapshot(),
            "local_users": {
                **self.interceptor.users.to_json(),
                "refused": self.counters.get("local_user_refused"),
                "unknown": self.counters.get("local_user_unknown"),
            },
            "host": self.hoster.snapshot(),
            "host_skipped": self.unhosted,
            "router_links": self.router_links.statistics(),
            "streams": {
                "dial": self.interceptor.live_connections(),
                "host": self.hoster.live_streams(),
                "whois_entries": len(self.whois),
            },
            "root": self.root.snapshot() if self.root is not None else None,
            "overlay": self.overlay,
            "tun": self.tun.snapshot() if self.tun is not None else None,
            "counters": self.counters.snapshot(),
        }

    def _whois_route(self, request: Request) -> dict[str, Any]:
        text = request.query.get("addr", "")
        try:
            address = parse_address(text)
        except ValueError as exc:
            raise ApiError(400, "bad_address", str(exc)) from None
        delivery = self.whois.lookup(address)
        if delivery is None:
            self.counters.add("whois_unknown")
            raise ApiError(404, "unknown_connection", f"the agent delivered no connection {text}")
        return {"addr": f"{address[0]}:{address[1]}", **delivery.to_json()}

    async def _ping_route(self, request: Request) -> dict[str, Any]:
        body = request.json()
        service = body.get("service")
        count = body.get("count", 1)
        if not isinstance(service, str) or not service:
            raise ApiError(400, "bad_request", 'ping needs {"service": NAME}')
        if not isinstance(count, int) or not 1 <= count <= _MAX_PINGS:
            raise ApiError(400, "bad_request", f"count must be 1..{_MAX_PINGS}")
        return await self.ping(service, count)

    async def _refresh_route(self, _request: Request) -> dict[str, Any]:
        return {"refreshed": await self.refresh(), "error": self.refresh_error}

    async def _renew_route(self, _request: Request) -> dict[str, Any]:
        """Renew the certificate now (it also renews itself at half-life); the Workload API
        streams the new one."""
        try:
            await self.context.renew_now()
        except UmbraError as exc:
            self.counters.add(f"renew_failed.{exc.code}")
            raise ApiError(_STATUS_BY_CODE.get(exc.code, 502), exc.code, exc.reason) from None
        certificate = self.context.identity.certificate
        return {"cert_not_after": certificate.not_valid_after_utc.isoformat()}

    async def ping(self, service: str, count: int = 1) -> dict[str, Any]:
        """Time `count` dials of `service` (DIAL -> ACCEPT: one round trip through a router to
        the host and back, with the end-to-end handshake); the ticket is fetched untimed."""
        rtts: list[float] = []
        router = ""
        host: dict[str, Any] = {}
        try:
            grant = await self.context.ticket(service, Action.DIAL)
            for _ in range(count):
                start = time.perf_counter()
                stream = await self.context.dial(service)
                rtts.append(round((time.perf_counter() - start) * 1000, 3))
                router = str(stream.get_extra_info("router"))
                host = {"name": stream.peer.name, "spiffe_id": stream.peer.spiffe_id}
                self._spawn(_finish_probe(stream))
        except UmbraError as exc:
            self.counters.add(f"ping_failed.{exc.code}")
            raise ApiError(_STATUS_BY_CODE.get(exc.code, 502), exc.code, exc.reason) from None
        address = next((r.address for r in self.routers if r.name == router), None)
        rtt = self.context.statistics().get("router_rtt_ms", {}).get(address or "")
        return {
            "service": service,
            "router": router,
            "path": [{"router": router, "rtt_ms": rtt}, *await self._hops_beyond(grant, router)],
            "host": host,
            "rtt_ms": rtts,
            "min_ms": min(rtts),
            "avg_ms": round(sum(rtts) / len(rtts), 3),
        }

    # -- internals --------------------------------------------------------------------------

    async def _hops_beyond(self, grant: Grant, router: str) -> list[dict[str, Any]]:
        """The routers after `router` on the way to the service, each with the RTT of the
        link that reached it (the routers' own keepalive measurements, as the controller
        holds them); none when the controller is away or the path ends at `router`."""
        try:
            client = await self.controller.get()
            path = await client.my_path(grant.ticket, router)
        except Exception as exc:  # the first hop alone is still an answer
            self.counters.add("ping_path_failed")
            log.info("ping: no path beyond %s from the controller: %s", router, exc)
            return []
        return [
            {"router": hop.get("name") or hop.get("router"), "rtt_ms": hop.get("rtt_ms")}
            for hop in path.get("hops", [])[1:]
            if hop.get("router")
        ]

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def run_agent(config: AgentConfig, on_ready: Callable[[Agent], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT; `on_ready` is called once the API and listeners are up."""
    loop = asyncio.get_running_loop()
    async with Agent(config) as agent:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        try:
            if on_ready is not None:
                on_ready(agent)
            await agent.wait_stopped()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


async def _finish_probe(stream: Stream) -> None:
    """End a ping's stream gracefully: half-close, discard what the host says until its
    EOF (a banner, say), and reset it only if the host keeps it open."""
    stream.write_eof()
    try:
        async with asyncio.timeout(_PROBE_LINGER):
            while await stream.read(65536):
                pass
    except (TimeoutError, UmbraError, OSError):
        stream.abort("ping finished")


def _write_pidfile(config: AgentConfig) -> None:
    temporary = config.pidfile.with_suffix(".tmp")
    temporary.write_text(f"{os.getpid()}\n")
    os.replace(temporary, config.pidfile)


def _remove_pidfile(config: AgentConfig) -> None:
    """Remove the pidfile if it is still ours (a newer agent may have replaced it)."""
    with contextlib.suppress(OSError, ValueError):
        if int(config.pidfile.read_text().strip()) == os.getpid():
            config.pidfile.unlink()
