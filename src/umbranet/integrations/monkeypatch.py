"""Opt-in socket patching: unmodified Python code dials and hosts dark services by name.

    ctx = BlockingContext("app.json")
    monkeypatch(ctx, dial={"db.internal:5432": "postgres-svc"}, host={"127.0.0.1:8080": "web"})

**Dialing.** A connection to any ``NAME.umbra`` host (service ``NAME``, any port) or to a
configured ``host:port`` pair goes through the overlay. The design is the one a resolver and a
connect hook make together, as in the agent's DNS mode but inside the process:

- ``socket.getaddrinfo`` (and ``gethostbyname``) answer such a name with a *placeholder*
  address from 127.85.0.0/16, one per name (`patch_names` says why loopback);
- ``socket.socket.connect`` / ``connect_ex`` map a placeholder (or a configured IP-literal
  pair) back to its service, dial it with the SDK and put the dialed stream behind the app's
  own socket (``os.dup2`` of a socket bridge, see `patch_runtime`).

Resolving and connecting separately is what lets every path work without knowing it:
``socket.create_connection``, ``http.client``, redis-py and pg8000 resolve then connect;
asyncio's ``open_connection``/``loop.create_connection`` resolve with ``socket.getaddrinfo`` in
an executor thread and connect with ``loop.sock_connect``, which calls ``socket.connect`` on a
non-blocking socket (the dial then runs in the background; see `patch_runtime`). Libraries that
take a name and call ``loop.sock_connect`` themselves are covered the same way.

**Hosting.** ``bind`` to a configured address (``"127.0.0.1:8080"``, or ``"*:8080"`` for any
address at that port) binds nothing; the following ``listen`` binds the service at the
routers, and ``accept`` returns the overlay's streams as connections. The service is dark:
no TCP port is open on the host. ``peer_of(conn)`` says which identity is behind an accepted
connection; its address is a placeholder (``127.85.255.254``). Closing the listening socket
unbinds the service; accepted connections go on.

**Pass-through.** Any other name or address calls the original function, untouched (a
loopback server keeps working while patched). Only ``SOCK_STREAM`` IP sockets are considered.

**Lifecycle.** Patching is process-wide and refused while a patch is active
(``RuntimeError``): a second configuration silently replacing the first would send traffic
where its caller did not expect. `unpatch()` restores every original exactly (the class's own
attributes put back, inherited ones removed), stops hosting (connections in flight go on), and
is a no-op when nothing is patched. `statistics()` counts dials, hosted services, accepted
connections and every refusal by its code (``refused_port_not_configured``,
``refused_dial_failed``, ``refused_dial_timeout``, ``refused_unknown_placeholder``,
``refused_host_failed``), each also logged with its reason.

**Clients that connect in C.** libpq resolves through Python's ``getaddrinfo`` (psycopg 3 does
that itself) but connects in C, so it reaches the placeholder, where nothing listens: refused
on this host. ``native=True`` opens a loopback *door* there that admits this process only
(`patch_native`). uvloop resolves and connects in libuv, around all of this: run patched code
on the stdlib loop. The context must be a `BlockingContext` (its own loop thread); blocking
connects on that thread would wait for themselves.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from umbranet.integrations import patch_socket
from umbranet.integrations.patch_names import AddressBook, parse_address
from umbranet.integrations.patch_runtime import PatchRuntime
from umbranet.proto.e2e import PeerIdentity
from umbranet.sdk.blocking import BlockingContext

__all__ = ["is_patched", "monkeypatch", "patched", "peer_of", "statistics", "target_of", "unpatch"]

_lock = threading.Lock()


def monkeypatch(
    context: BlockingContext,
    dial: dict[str, str] | None = None,
    host: dict[str, str] | None = None,
    *,
    native: bool = False,
) -> None:
    """Send ``*.umbra`` and the `dial` pairs (``"host:port": service``) through the overlay;
    host `host`'s services (``"ip:port": service``) on sockets bound to those addresses.
    `native`: also open a loopback door per resolved name for C clients (`patch_native`).

    Raises RuntimeError when a patch is already active, ValueError for a malformed address.
    """
    book = AddressBook.from_config(dict(dial or {}))
    hosting = {parse_address(address): service for address, service in (host or {}).items()}
    with _lock:
        if patch_socket.ACTIVE is not None:
            raise RuntimeError("umbranet.monkeypatch is already active: call unpatch() first")
        patch_socket.install(PatchRuntime(context, book, hosting, native=native))


def unpatch() -> None:
    """Restore the socket module as it was; safe to call when not patched."""
    with _lock:
        runtime = patch_socket.uninstall()
    if runtime is not None:
        runtime.close()


@contextmanager
def patched(
    context: BlockingContext,
    dial: dict[str, str] | None = None,
    host: dict[str, str] | None = None,
    *,
    native: bool = False,
) -> Iterator[None]:
    """`monkeypatch` for the duration of a ``with`` block."""
    monkeypatch(context, dial=dial, host=host, native=native)
    try:
        yield
    finally:
        unpatch()


def is_patched() -> bool:
    return patch_socket.ACTIVE is not None


def statistics() -> dict[str, int]:
    """The active patch's counters (empty when not patched)."""
    runtime = patch_socket.ACTIVE
    return runtime.statistics() if runtime is not None else {}


def peer_of(conn: socket.socket) -> PeerIdentity | None:
    """The overlay identity behind a connection accepted from a hosted socket, else None."""
    runtime = patch_socket.ACTIVE
    info = runtime.lookup(conn) if runtime is not None else None
    return info.identity if info is not None else None


def target_of(host: str, port: int, dial: dict[str, str]) -> str | None:
    """The overlay service a connection to (host, port) goes to under `dial`, or None."""
    return AddressBook.from_config(dial).service_for(host, port)
