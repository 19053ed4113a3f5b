"""Relay across two routers: which neighbouring router holds a WireGuard key, sans-IO.

Two devices whose relay links go to different routers (each to the one it measures fastest)
are relayed over the router mesh, one hop:

    A ──WG_DATAGRAM(B)──► RA ──WG_DATAGRAM(B, A)──► RB ──WG_DATAGRAM(A)──► B

For that RA must know that RB holds B's key. Each router tells its directly linked routers
the keys of its endpoint links that speak the relay (`MeshDirectory`): a WG_RELAY_ALLOW on a
router link with ``{"keys": [hex], "gone": [hex]}``, sent as the set changes, in chunks. Only
a router's own endpoints are announced, never keys it learned, so nothing loops and a path is
at most two routers (longer paths are not offered: the devices pick routers by RTT, see
`proto.relay_choice`, and a pair far apart uses two that are linked).

RB does not take RA's word for the pair: RA forwards the source's relay ticket
(``{"ticket", "peer", "source", "subject", "binding"}``) and RB checks it through its own
ticket gate (signature, expiry, epoch, subject, destination key, and the certificate key RA
saw on the source's link) before it relays a datagram from that source to that key; a
forged, expired or stale ticket is refused with its code, counted, logged and answered with
WG_RELAY_ERR (``source`` added) that RA passes to the source's link. Like a circuit's hops,
a router is trusted to report which link a frame came from, not to grant anything.

Keys are public and the datagrams are sealed end to end: routers still see ciphertext only.
"""

from __future__ import annotations

from collections.abc import Iterable

from umbranet.router.links import SwitchLink
from umbranet.wire import ErrorCode, FrameType, WireError
from umbranet.wire.control import encode_control
from umbranet.wire.frames import WG_KEY_SIZE, encode_header

__all__ = ["ANNOUNCE_CHUNK", "MAX_REMOTE_KEYS", "MeshDirectory", "parse_keys"]

ANNOUNCE_CHUNK = 500  # keys per frame: 500 keys of 66 bytes of JSON stays far under MAX_PAYLOAD
MAX_REMOTE_KEYS = 100_000  # keys learned from all neighbours together; more are ignored


def parse_keys(items: object) -> list[bytes]:
    """A list of hex X25519 keys, or WireError (a neighbour sending junk is a broken peer)."""
    if not isinstance(items, list):
        raise WireError(ErrorCode.BAD_CONTROL_PAYLOAD, "relay keys must be a list")
    out = []
    for item in items:
        try:
            key = bytes.fromhex(item) if isinstance(item, str) else b""
        except ValueError:
            key = b""
        if len(key) != WG_KEY_SIZE:
            raise WireError(ErrorCode.BAD_CONTROL_PAYLOAD, "relay keys must be 32-byte hex")
        out.append(key)
    return out


class MeshDirectory:
    """Keys held by this router's endpoints, as told to neighbours; keys neighbours hold."""

    def __init__(self) -> None:
        self._routers: dict[SwitchLink, set[bytes]] = {}  # router link -> keys told to it
        self._version = 0  # bumped when the local key set changes
        self._told_version: dict[SwitchLink, int] = {}
        self.remote: dict[bytes, SwitchLink] = {}  # key -> the router link that holds it
        self.ignored = 0  # announced keys past MAX_REMOTE_KEYS

    def add_router(self, link: SwitchLink) -> None:
        self._routers[link] = set()
        self._told_version[link] = -1

    def changed(self) -> None:
        """The local key set changed: tell neighbours on the next poll."""
        self._version += 1

    def router_gone(self, link: SwitchLink) -> None:
        self._routers.pop(link, None)
        self._told_version.pop(link, None)
        for key in [k for k, via in self.remote.items() if via is link]:
            del self.remote[key]

    def learn(self, link: SwitchLink, keys: Iterable[bytes], gone: Iterable[bytes]) -> None:
        """A neighbour's announcement; the newest announcer of a key wins."""
        for key in gone:
            if self.remote.get(key) is link:
                del self.remote[key]
        for key in keys:
            if key not in self.remote and len(self.remote) >= MAX_REMOTE_KEYS:
                self.ignored += 1
                continue
            self.remote[key] = link

    def due(self) -> bool:
        """Whether a neighbour may be owed an announcement (`poll` has work): lets the
        caller skip building the local key set, which the switch polls on every dial."""
        if not self._told_version:
            return False
        version = self._version
        return any(told != version for told in self._told_version.values())

    def poll(self, local: set[bytes]) -> list[tuple[SwitchLink, list[bytes]]]:
        """Announcements due: (router link, buffers) for each ready neighbour whose view of
        `local` is out of date. Cheap when nothing changed (a version compare per router)."""
        out: list[tuple[SwitchLink, list[bytes]]] = []
        for link, told in self._routers.items():
            if self._told_version[link] == self._version or not link.session.ready:
                continue
            added = sorted(local - told)
            gone = sorted(told - local)
            buffers: list[bytes] = []
            while added or gone:
                fields = {
                    "keys": [k.hex() for k in added[:ANNOUNCE_CHUNK]],
                    "gone": [k.hex() for k in gone[:ANNOUNCE_CHUNK]],
                }
                added, gone = added[ANNOUNCE_CHUNK:], gone[ANNOUNCE_CHUNK:]
                payload = encode_control(fields)
                header = encode_header(int(FrameType.WG_RELAY_ALLOW), 0, len(payload))
                buffers += [header, payload]
            self._routers[link] = set(local)
            self._told_version[link] = self._version
            if buffers:
                out.append((link, buffers))
        return out

    def statistics(self) -> dict[str, int]:
        return {"mesh_routers": len(self._routers), "remote_keys": len(self.remote)}
