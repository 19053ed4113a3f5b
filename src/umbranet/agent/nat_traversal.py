"""Network mode's NAT traversal: gather candidates on the WireGuard port, publish them,
probe the peers', and let the device follow the direct pair (issue 14).

`NatTraversal.wrap(device)` returns the `Traversal` facade the WireGuard driver runs in place
of the bare device, so STUN answers and probes arriving on the WireGuard socket reach it.
`refresh(client, view)` runs on every agent refresh: the first time (and every `regather`
seconds) it asks the routers' STUN servers how they see the port and publishes the
candidates (`PUT /v1/network/candidates`); every time it reads the candidates of the peers
the filtered view lists (`GET /v1/network/candidates`, gated like the view) and hands them to
the probe agent.

The driver only arms its timer after its own wake-ups, so this runner keeps one small task
that sends traversal's queued datagrams and fires its timers at their deadlines; together
they never do a timer twice in a way that matters (both machines are driven by `now`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from umbranet.aio.nat import local_addresses, parse_hostport
from umbranet.aio.turn_bridge import TurnBridge
from umbranet.aio.turn_stream import TurnServer, parse_turn_url
from umbranet.client.controller import ControllerClient, ControllerError
from umbranet.clock import Clock, system_clock
from umbranet.proto.ice import Candidate
from umbranet.proto.paths import PathSet
from umbranet.proto.traversal import Gathered, Traversal
from umbranet.proto.wireguard import Device
from umbranet.proto.wireguard.crypto import public_key

__all__ = ["NatTraversal"]

log = logging.getLogger("umbranet.agent.nat")

GATHER_SECONDS = 3.0
REGATHER_SECONDS = 300.0
FOLLOW_UP_DELAYS = (2.0, 4.0, 8.0, 16.0, 32.0)
"""When peers of the view have published no candidates yet, read theirs again after these
pauses: two devices coming up together publish seconds apart, and the one that read first
would otherwise wait for its next agent refresh (300 s) to go direct."""


class NatTraversal:
    """See the module docstring. `sock` is the WireGuard socket (bound, non-blocking)."""

    def __init__(
        self,
        sock: socket.socket,
        private_key: bytes,
        *,
        clock: Clock = system_clock,
        regather: float = REGATHER_SECONDS,
        skip_interfaces: Collection[str] = (),
        follow_up: tuple[float, ...] = FOLLOW_UP_DELAYS,
        mark: int | None = None,
    ) -> None:
        self._sock = sock
        self._mark = mark  # on a TURN server's TCP/TLS link: an exit node's route skips it
        self._skip = tuple(skip_interfaces)
        self._private = private_key
        self._clock = clock
        self._regather = regather
        self._follow_up_delays = follow_up
        self._following_up: asyncio.Task[None] | None = None
        self.traversal: Traversal | None = None
        self.gathered: Gathered | None = None
        self.peer_nat: dict[bytes, str] = {}
        self._gathered_at: float | None = None
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._followed = False
        self._local: list[str] = []
        self._probed: set[bytes] = set()
        self._turn_expires = 0.0
        self._bridge: TurnBridge | None = None
        self._bridged: TurnServer | None = None

    def wrap(
        self, device: Device, paths: Callable[[bytes], PathSet | None] | None = None
    ) -> Traversal:
        """The facade the driver runs; with `paths` (the driver's per-peer path sets),
        selected pairs go into them instead of into the device's endpoint."""
        self.traversal = Traversal(
            device, self._private, public_key(self._private), random_bytes=os.urandom, paths=paths
        )
        self.traversal.on_queued = self._kick.set
        self._task = asyncio.get_running_loop().create_task(self._pump())
        return self.traversal

    async def close(self) -> None:
        for task in (self._task, self._refreshing, self._following_up):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._refreshing = self._following_up = None
        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None

    def refresh_soon(
        self, open_client: Callable[[], ControllerClient], view: Mapping[str, Any]
    ) -> None:
        """`refresh` in the background (gathering waits for STUN answers, and the agent's
        refresh must not wait for them); skipped while the previous one still runs."""
        if self._refreshing is not None and not self._refreshing.done():
            return

        async def run() -> None:
            async with open_client() as client:
                await self.refresh(client, view)
            self._follow_up(open_client, view)

        self._refreshing = asyncio.get_running_loop().create_task(run())

    def silent_peers(self) -> list[bytes]:
        """Peers of the view that have published no candidates (as of the last read)."""
        return [key for key in self._probed if key not in self.peer_nat]

    def _follow_up(
        self, open_client: Callable[[], ControllerClient], view: Mapping[str, Any]
    ) -> None:
        """Read the candidates again at `FOLLOW_UP_DELAYS` while some peer has none; the
        next refresh replaces this (its view is newer)."""
        if self._following_up is not None:
            self._following_up.cancel()
        traversal = self.traversal
        if traversal is None or not self.silent_peers():
            return

        async def run() -> None:
            for delay in self._follow_up_delays:
                await asyncio.sleep(delay)
                try:
                    async with open_client() as client:
                        await self._follow(client, traversal, view)
                except (ControllerError, OSError, ValueError) as exc:
                    log.debug("NAT traversal: reading candidates again failed: %s", exc)
                if not self.silent_peers():
                    return

        self._following_up = asyncio.get_running_loop().create_task(run())

    @property
    def socket(self) -> RelayingSocket:
        """The socket the driver should use: the WireGuard socket, with datagrams to a peer
        heard only through our TURN relay wrapped for it on the way out."""
        assert self.traversal is not None, "wrap() first"
        return RelayingSocket(self._sock, self.traversal)

    def direct(self, key: bytes) -> tuple[str, int] | None:
        return None if self.traversal is None else self.traversal.direct.get(key)

    def endpoint_for(self, key: bytes, published: tuple[str, int] | None) -> tuple[str, int] | None:
        """Where the device should send to `key`: the direct pair once found; the endpoint
        the controller saw only for a peer that published no candidates. Until candidates
        were read once, nothing: a handshake sent where a NAT drops it would hold the next
        try back for the protocol's 5 s."""
        direct = self.direct(key)
        if direct is not None:
            return direct
        if self._followed and key not in self.peer_nat:
            return published
        return None

    async def refresh(self, client: ControllerClient, view: Mapping[str, Any]) -> None:
        """Gather/publish when due, then follow the peers' candidates; failures are logged,
        never raised (the relay path, or the published endpoint, still works)."""
        traversal = self.traversal
        if traversal is None:
            return
        try:
            now = self._clock.now().mono
            local = sorted(local_addresses(self._skip))
            due = self._gathered_at is None or now - self._gathered_at >= self._regather
            if due or local != self._local:
                # on a network change (an address came or went) at once, not at the period
                await self._gather(client, traversal)
                self._gathered_at = now
                self._local = local
            await self._follow(client, traversal, view)
        except (ControllerError, OSError, ValueError) as exc:
            # a controller without these routes (or failing now) must not leave peers with
            # no endpoint: the ones without candidates get the endpoint the controller saw
            self._followed = True
            log.warning("NAT traversal: %s", exc)

    async def _gather(self, client: ControllerClient, traversal: Traversal) -> None:
        config = await client.nat_config()
        servers = [parse_hostport(str(s)) for s in config.get("stun") or []]
        traversal.gather(servers, self._clock.now())
        self._kick.set()
        for _ in range(int(GATHER_SECONDS / 0.05)):
            if not traversal.gathering:
                break
            await asyncio.sleep(0.05)
        await self._allocate(config.get("turn"), traversal)
        port = int(self._sock.getsockname()[1])
        self.gathered = traversal.gathered(local_addresses(self._skip), port)
        published = list(self.gathered.candidates)
        if traversal.relayed is not None:
            published.append(Candidate("relay", traversal.relayed))
        await client.set_candidates([c.to_json() for c in published], self.gathered.nat)
        log.info(
            "NAT traversal: %s, candidates %s",
            self.gathered.nat,
            ", ".join(f"{c.kind} {c.address[0]}:{c.address[1]}" for c in self.gathered.candidates),
        )

    async def _allocate(self, turn: object, traversal: Traversal) -> None:
        """A TURN relay when the network has one: allocated once, and again when the
        allocation failed or its credential is within 10 minutes of expiring (coturn refuses
        a Refresh under an expired username)."""
        if not isinstance(turn, dict) or not turn.get("urls"):
            return
        fresh = traversal.relayed is not None and self._turn_expires - time.time() > 600
        if fresh:
            return
        server = await self._turn_address(str(turn["urls"][0]))
        if server is None:
            return
        traversal.set_turn(server, str(turn["username"]), str(turn["password"]), self._clock.now())
        self._turn_expires = float(turn.get("expires") or 0)
        self._kick.set()
        for _ in range(int(GATHER_SECONDS / 0.05)):
            if traversal.relayed is not None or traversal.turn_failed is not None:
                break
            await asyncio.sleep(0.05)
        if traversal.relayed is None:
            log.warning("NAT traversal: no TURN relay (%s)", traversal.turn_failed or "timeout")

    async def _turn_address(self, url: str) -> tuple[str, int] | None:
        """Where the TURN client sends: the server itself over UDP, or the loopback bridge
        to it over TCP/TLS (``?transport=tcp``, ``turns:``; `aio/turn_bridge.py`)."""
        parsed = _turn_server(url)
        if parsed is None:
            log.warning("NAT traversal: unusable TURN URL %r", url)
            return None
        if parsed.transport == "udp":
            return parsed.address
        bridge = self._bridge
        if bridge is not None and self._bridged == parsed and not bridge.closed.is_set():
            return bridge.address
        if bridge is not None:
            bridge.close()
        context = ssl.create_default_context() if parsed.transport == "tls" else None
        try:
            self._bridge = await TurnBridge.open(
                parsed.address, ssl_context=context, server_hostname=parsed.host, mark=self._mark
            )
        except OSError as exc:
            self._bridge = None
            log.warning("NAT traversal: no TURN relay (%s)", exc)
            return None
        self._bridged = parsed
        return self._bridge.address

    async def _follow(
        self, client: ControllerClient, traversal: Traversal, view: Mapping[str, Any]
    ) -> None:
        published = await client.peer_candidates()
        keys: dict[str, bytes] = {}
        seen_at: dict[str, Candidate] = {}  # the endpoint the controller saw, per peer
        overlay: set[str] = set()  # never a candidate: the tunnel would carry itself
        for item in view.get("peers", []):
            overlay.update(str(item.get(k)) for k in ("ipv4", "ipv6") if item.get(k))
            with contextlib.suppress(binascii.Error, ValueError, TypeError):
                key = base64.b64decode(item.get("noise_public_key") or "", validate=True)
                if len(key) == 32:
                    keys[str(item.get("spiffe_id"))] = key
                host, _, port = str(item.get("endpoint") or "").rpartition(":")
                endpoint = {"kind": "srflx", "host": host.strip("[]"), "port": int(port or 0)}
                if (found := Candidate.from_json(endpoint)) is not None:
                    seen_at[str(item.get("spiffe_id"))] = found
        now = self._clock.now()
        for spiffe_id, key in keys.items():
            # every peer of the view is known to the prober, even one that published nothing
            # yet: its probes are answered and its address learned (peer-reflexive)
            entry = published.get(spiffe_id)
            candidates: list[Candidate] = []
            if isinstance(entry, dict):
                raw = entry.get("candidates") or []
                candidates = [
                    c
                    for r in raw
                    if (c := Candidate.from_json(r)) is not None and c.address[0] not in overlay
                ]
                self.peer_nat[key] = str(entry.get("nat", "unknown"))
            else:
                self.peer_nat.pop(key, None)
            extra = seen_at.get(spiffe_id)
            if extra is not None and extra.address not in {c.address for c in candidates}:
                # what worked before traversal stays one of the pairs tried
                candidates.append(extra)
            traversal.set_peer(key, candidates, now)
        wanted = set(keys.values())
        for key in self._probed - wanted:
            traversal.remove_peer(key)
            self.peer_nat.pop(key, None)
        self._probed = wanted
        self._followed = True
        traversal.reoffer(self._clock.now())
        self._kick.set()

    async def _pump(self) -> None:
        """Send traversal's datagrams and fire its timers (STUN and probes only)."""
        while True:
            traversal = self.traversal
            assert traversal is not None
            now = self._clock.now()
            traversal.stun.handle_timeout(now)
            traversal.agent.handle_timeout(now)
            if traversal.turn is not None:
                traversal.turn.handle_timeout(now)
            traversal.drain(now)
            while (out := traversal.poll_own_transmit()) is not None:
                with contextlib.suppress(OSError):
                    self.socket.sendto(out[0], out[1])
            machines = (traversal.stun, traversal.agent, traversal.turn)
            deadlines = [d.at for m in machines if m is not None and (d := m.poll_timeout())]
            delay = min(deadlines) - now.mono if deadlines else 5.0
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), max(0.01, min(delay, 5.0)))

    def path_reason(self, key: bytes) -> str:
        """Why a peer is (not) direct, for `umbra status`."""
        if self.traversal is not None and self.traversal.is_relayed(key):
            return "relayed (TURN)"
        if self.direct(key) is not None:
            return "direct"
        ours = self.gathered.nat if self.gathered else "unknown"
        theirs = self.peer_nat.get(key, "unknown")
        if "udp-blocked" in (ours, theirs):
            return "UDP blocked" + (" here" if ours == "udp-blocked" else " at the peer")
        if theirs == "endpoint-dependent":
            return "peer behind address-dependent NAT"
        if ours == "endpoint-dependent":
            return "behind address-dependent NAT"
        state = self.traversal.agent.state(key) if self.traversal else None
        return "checking" if state is not None and state.value == "checking" else "no direct pair"

    def snapshot(self) -> dict[str, Any]:
        gathered = self.gathered
        traversal = self.traversal
        return {
            "nat": gathered.nat if gathered else None,
            "candidates": [c.to_json() for c in gathered.candidates] if gathered else [],
            "stun_rtt": gathered.rtt if gathered else {},
            "probes": traversal.agent.statistics() if traversal else None,
            # TURN over TCP/TLS: the bridge's refusals and framing verdicts, counted
            "turn_bridge": self._bridge.statistics() if self._bridge is not None else None,
        }


def _turn_server(url: str) -> TurnServer | None:
    """A ``turn:``/``turns:`` URL naming an IP address (the data plane resolves no names)."""
    parsed = parse_turn_url(url)
    if parsed is None:
        return None
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in parsed.host else socket.AF_INET, parsed.host)
    except OSError:
        return None
    return parsed


class RelayingSocket:
    """The WireGuard socket as the driver sees it: every send to an address that hears us
    only through our TURN relay leaves wrapped for the TURN server (a Send indication per
    datagram; a GSO batch is cut into its segments first). Everything else is the socket."""

    def __init__(self, sock: socket.socket, traversal: Traversal) -> None:
        self._sock = sock
        self._traversal = traversal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def fileno(self) -> int:
        return self._sock.fileno()

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        addr = (str(address[0]), int(address[1]))
        if not self._traversal.via_turn(addr):
            return self._sock.sendto(data, address)
        for wrapped, server in self._traversal.relay_wrap(addr, bytes(data)):
            self._sock.sendto(wrapped, server)
        return len(data)

    def sendmsg(
        self, buffers: list[bytes], ancdata: list[tuple[int, int, bytes]], flags: int, address: Any
    ) -> int:
        addr = (str(address[0]), int(address[1]))
        if not self._traversal.via_turn(addr):
            return self._sock.sendmsg(buffers, ancdata, flags, address)
        data = b"".join(buffers)
        size = len(data)
        for _level, kind, value in ancdata:
            if kind == _UDP_SEGMENT and len(value) >= 2:
                size = int.from_bytes(value[:2], sys.byteorder)
        for start in range(0, len(data), max(1, size)):
            self.sendto(data[start : start + size], addr)
        return len(data)


_UDP_SEGMENT = 103
