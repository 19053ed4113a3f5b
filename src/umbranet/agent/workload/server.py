"""The SPIFFE Workload API gRPC server, on a Unix socket, on a thread of its own.

Why a thread: the agent runs on uvloop, and grpc.aio drives its completion queue with its
own machinery that is only supported on the standard asyncio loop. So the server gets a
dedicated thread with a standard loop, and the agent hands it state thread-safely:
`publish_x509` and `publish_jwt_bundle` swap immutable snapshots and wake every open
stream; JWT-SVIDs are fetched through a callback that runs on the agent's loop and answers
with a `concurrent.futures.Future`.

Contract (the SPIFFE Workload API spec):
- every call must carry the metadata ``workload.spiffe.io: true``, else INVALID_ARGUMENT
  ("security header missing from request"): it proves the caller is a Workload API client
  and not a browser or proxy tricked into talking to the socket;
- the three streaming calls send the current value at once and again on every change;
  a stream opened before the first value exists waits for it;
- FetchJWTSVID needs at least one audience (INVALID_ARGUMENT otherwise); a ``spiffe_id``
  other than ours is PERMISSION_DENIED; a controller we cannot reach is UNAVAILABLE;
- ValidateJWTSVID checks signature (our JWT bundle), ``exp``, that ``aud`` holds the given
  audience and that ``sub`` is in our trust domain; failures are INVALID_ARGUMENT with the
  check's reason, success returns the SPIFFE ID and every claim as a Struct.

Who may call: whoever can connect to the socket gets the agent's identity. The socket is
owner-only (0600; before the chmod it is at most 0755, and connecting needs write
permission), so that is the agent's own user. Tokens and keys are never logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import stat
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import struct_pb2

from umbranet.agent.workload import workload_pb2 as pb
from umbranet.agent.workload import workload_pb2_grpc as pb_grpc
from umbranet.agent.workload.svids import X509Material
from umbranet.client.controller import JwtSvidGrant
from umbranet.pki import PkiError
from umbranet.pki.jwt_svid import JwtBundle, verify_jwt_svid

__all__ = [
    "SECURITY_HEADER",
    "WorkloadApiError",
    "WorkloadApiServer",
    "parse_endpoint_socket",
]

log = logging.getLogger("umbranet.agent.workload")

SECURITY_HEADER = ("workload.spiffe.io", "true")
MAX_CONCURRENT_RPCS = 256
"""Streams stay open for as long as a workload runs; bound them so a runaway client cannot
exhaust the agent (past the bound, calls get RESOURCE_EXHAUSTED)."""
JWT_FETCH_TIMEOUT = 15.0
STOP_GRACE = 1.0

FetchJwt = Callable[[tuple[str, ...]], "concurrent.futures.Future[JwtSvidGrant]"]
"""Runs on the agent's loop; the future fails with `WorkloadApiError` to refuse."""


class WorkloadApiError(Exception):
    """A refusal to send to the client: ``code`` is a grpc.StatusCode name."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def parse_endpoint_socket(value: str) -> Path:
    """``unix:///path``, ``unix:/path`` (the SPIFFE_ENDPOINT_SOCKET forms) or a plain path."""
    text = value.strip()
    if text.startswith("unix:"):
        text = text[len("unix:") :]
        if text.startswith("//"):
            text = text[2:]  # unix:///path: an empty authority, then the absolute path
    elif "://" in text:
        raise ValueError(f"{value!r}: the Workload API endpoint must be a unix socket")
    if not text:
        raise ValueError(f"{value!r} names no socket path")
    return Path(text).expanduser()


@dataclass(frozen=True, slots=True)
class _State:
    x509: X509Material | None = None
    jwks: bytes | None = None
    jwt_bundle: JwtBundle | None = None


class WorkloadApiServer:
    """``server.start()`` ... ``server.publish_x509(m)`` ... ``server.stop()``.

    All public methods are called from the agent's thread; the gRPC server lives on its own.
    """

    def __init__(self, path: Path, fetch_jwt: FetchJwt) -> None:
        self.path = path
        self._fetch_jwt = fetch_jwt
        self._state = _State()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._inode: int | None = None
        self.counters: dict[str, int] = {}

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Bind the socket and serve; returns once it accepts calls, or raises OSError."""
        _clear_stale_socket(self.path)
        self._thread = threading.Thread(target=self._run, name="workload-api", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise OSError(f"the Workload API did not start on {self.path}")
        if self._failure is not None:
            self._thread.join()
            raise OSError(f"cannot serve the Workload API on {self.path}: {self._failure}")
        log.info("workload API listening on unix://%s", self.path)

    def stop(self) -> None:
        """Stop serving (open streams end), join the thread, remove the socket."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(STOP_GRACE + 10.0)
        with contextlib.suppress(OSError):
            if self._inode is not None and self.path.lstat().st_ino == self._inode:
                self.path.unlink()

    # -- state from the agent ---------------------------------------------------------------

    def publish_x509(self, material: X509Material) -> None:
        """A new X.509-SVID (start, rotation): every X.509 stream sends it."""
        with self._lock:
            self._state = _State(material, self._state.jwks, self._state.jwt_bundle)
        self._wake()

    def publish_jwt_bundle(self, jwks: bytes) -> None:
        """The trust domain's JWKS; streams get it only if it changed. Raises PkiError
        ``jwt_bundle_invalid`` for a document that is not a usable JWKS."""
        bundle = JwtBundle.parse(jwks)
        with self._lock:
            if self._state.jwks == jwks:
                return
            self._state = _State(self._state.x509, jwks, bundle)
        self._wake()

    def statistics(self) -> dict[str, Any]:
        return {"socket": str(self.path), "counters": dict(self.counters)}

    # -- the server thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
                runner.run(self._serve())
        except BaseException as exc:  # reported to start(); a thread must not raise
            if not self._ready.is_set():
                self._failure = exc
                self._ready.set()
            else:
                log.exception("the workload API stopped with an error")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        server = grpc.aio.server(maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS)
        pb_grpc.add_SpiffeWorkloadAPIServicer_to_server(_Servicer(self), server)
        if not server.add_insecure_port(f"unix:{self.path}"):
            raise OSError("grpc could not bind the socket")
        await server.start()
        try:
            os.chmod(self.path, 0o600)
            self._inode = self.path.lstat().st_ino
            self._ready.set()
            await self._stop.wait()
        finally:
            await server.stop(STOP_GRACE)

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._swap_event)

    def _swap_event(self) -> None:
        # Broadcast: everyone waiting on the old event wakes, later waiters get a new one.
        old, self._changed = self._changed, asyncio.Event()
        if old is not None:
            old.set()

    # -- for the servicer (server thread) ---------------------------------------------------

    def snapshot(self) -> tuple[_State, asyncio.Event]:
        assert self._changed is not None
        with self._lock:
            return self._state, self._changed

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    async def fetch_jwt(self, audience: tuple[str, ...]) -> JwtSvidGrant:
        future = self._fetch_jwt(audience)
        return await asyncio.wait_for(asyncio.wrap_future(future), JWT_FETCH_TIMEOUT)


class _Servicer(pb_grpc.SpiffeWorkloadAPIServicer):
    """The five calls (named as the spec names them); each checks the security header first."""

    def __init__(self, server: WorkloadApiServer) -> None:
        self._server = server

    async def FetchX509SVID(
        self, request: pb.X509SVIDRequest, context: Any
    ) -> AsyncIterator[pb.X509SVIDResponse]:
        await self._admit(context, "fetch_x509_svid")
        async for state in self._states(lambda s: s.x509):
            material = state.x509
            assert material is not None
            yield pb.X509SVIDResponse(
                svids=[
                    pb.X509SVID(
                        spiffe_id=material.spiffe_id,
                        x509_svid=material.chain_der,
                        x509_svid_key=material.key_der,
                        bundle=material.bundle_der,
                    )
                ]
            )

    async def FetchX509Bundles(
        self, request: pb.X509BundlesRequest, context: Any
    ) -> AsyncIterator[pb.X509BundlesResponse]:
        await self._admit(context, "fetch_x509_bundles")
        async for state in self._states(lambda s: s.x509 and s.x509.bundle_der):
            material = state.x509
            assert material is not None
            yield pb.X509BundlesResponse(bundles={material.trust_domain: material.bundle_der})

    async def FetchJWTBundles(
        self, request: pb.JWTBundlesRequest, context: Any
    ) -> AsyncIterator[pb.JWTBundlesResponse]:
        await self._admit(context, "fetch_jwt_bundles")
        async for state in self._states(lambda s: s.x509 and (s.x509.trust_domain, s.jwks)):
            assert state.x509 is not None and state.jwks is not None
            yield pb.JWTBundlesResponse(bundles={state.x509.trust_domain: state.jwks})

    async def FetchJWTSVID(self, request: pb.JWTSVIDRequest, context: Any) -> pb.JWTSVIDResponse:
        await self._admit(context, "fetch_jwt_svid")
        audience = tuple(a for a in request.audience if a)
        if not audience:
            await self._refuse(context, "INVALID_ARGUMENT", "audience must be specified")
        state, _changed = self._server.snapshot()
        if state.x509 is None:
            await self._refuse(context, "UNAVAILABLE", "no identity issued yet")
        if request.spiffe_id and request.spiffe_id != state.x509.spiffe_id:
            await self._refuse(
                context, "PERMISSION_DENIED", "no identity issued for the requested spiffe_id"
            )
        try:
            grant = await self._server.fetch_jwt(audience)
        except WorkloadApiError as exc:
            await self._refuse(context, exc.code, exc.reason)
        except TimeoutError:
            await self._refuse(context, "UNAVAILABLE", "the controller did not answer in time")
        self._server.count("jwt_svids_served")
        svid = pb.JWTSVID(spiffe_id=state.x509.spiffe_id, svid=grant.token)
        return pb.JWTSVIDResponse(svids=[svid])

    async def ValidateJWTSVID(
        self, request: pb.ValidateJWTSVIDRequest, context: Any
    ) -> pb.ValidateJWTSVIDResponse:
        await self._admit(context, "validate_jwt_svid")
        if not request.audience:
            await self._refuse(context, "INVALID_ARGUMENT", "audience must be specified")
        if not request.svid:
            await self._refuse(context, "INVALID_ARGUMENT", "svid must be specified")
        state, _changed = self._server.snapshot()
        if state.jwt_bundle is None or state.x509 is None:
            await self._refuse(context, "UNAVAILABLE", "no JWT bundle yet")
        try:
            svid = verify_jwt_svid(
                request.svid,
                state.jwt_bundle,
                trust_domain=state.x509.trust_domain,
                audience=request.audience,
                now=datetime.now(UTC),
            )
        except PkiError as exc:
            self._server.count(f"jwt_invalid.{exc.code}")
            await self._refuse(context, "INVALID_ARGUMENT", f"{exc.code}: {exc.reason}")
        claims = struct_pb2.Struct()
        claims.update(dict(svid.claims))
        return pb.ValidateJWTSVIDResponse(spiffe_id=str(svid.spiffe_id), claims=claims)

    # -- helpers ----------------------------------------------------------------------------

    async def _admit(self, context: Any, call: str) -> None:
        metadata = context.invocation_metadata() or ()
        if not any((m[0], m[1]) == SECURITY_HEADER for m in metadata):
            await self._refuse(context, "INVALID_ARGUMENT", "security header missing from request")
        self._server.count(f"calls.{call}")

    async def _refuse(self, context: Any, code: str, reason: str) -> NoReturn:
        """End the call with status `code` (a grpc.StatusCode name); abort always raises."""
        self._server.count(f"refused.{code.lower()}")
        log.info("workload API call refused: %s (%r)", code, reason)
        await context.abort(getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN), reason)
        raise AssertionError("grpc's abort returned")

    async def _states(self, key: Callable[[_State], object]) -> AsyncIterator[_State]:
        """The state as soon as `key(state)` is truthy, then whenever `key(state)` changes:
        a stream sends what its call is about, not every unrelated change."""
        sent: object = None
        while True:
            state, changed = self._server.snapshot()
            current = key(state)
            if current and current != sent:
                sent = current
                yield state
            await changed.wait()


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket a dead agent left; refuse a live one or anything that is not a socket."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another Workload API server")
