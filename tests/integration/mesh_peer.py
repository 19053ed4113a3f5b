"""The processes of the namespace mesh lab (`mesh_lab.py`); each prints JSON lines.

python mesh_peer.py admin HOME SPEC.json   -> creates routers, services, identities; enrolls
python mesh_peer.py edges HOME N           -> waits until the controller confirms N links
python mesh_peer.py disable HOME NAME      -> disables an identity (revocation), timed
python mesh_peer.py cost HOME ROUTER N     -> adds N to every path entering ROUTER
python mesh_peer.py host IDENTITY SERVICE ROUTERS [DEADLINE]
    -> binds at every router in ROUTERS (comma-separated HOST:PORT), echoes every stream
python mesh_peer.py dial IDENTITY SERVICE ROUTERS MIB [DEADLINE [GATES]]
    -> sends MIB MiB of a checkable pattern and reads the echo; says "third" a third in
       and "sent" before its EOF, and at each of those named in GATES (comma-separated)
       waits for a line on stdin first (so the test can look at the live stream); if the
       stream ends with an error, dials once more and says which host answered
python mesh_peer.py hold IDENTITY SERVICE ROUTERS
    -> dials, echoes once, says "ready", then reads until the stream ends

Every wait is bounded by WAIT; the test kills what is left by PID.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

from umbranet.aio.runtime import run
from umbranet.client.controller import ControllerClient
from umbranet.home_layout import ControllerHome
from umbranet.pki import IdentityFile
from umbranet.sdk import Context, DialError, Stream, UmbraError

WAIT = 60.0
CHUNK = 1 << 16


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "at": time.time(), **fields}), flush=True)


def pattern(size: int) -> Any:
    """The bytes a dialer sends: 64 KiB chunks, each a fixed random block with its own
    number in front, so a lost, repeated or reordered chunk changes the hash."""
    block = random.Random(11).randbytes(CHUNK - 8)
    for offset in range(0, size, CHUNK):
        yield (offset // CHUNK).to_bytes(8, "big") + block


# -- admin (in the controller's namespace) ----------------------------------------------


def _admin(home: str) -> ControllerClient:
    return ControllerClient(IdentityFile.load(ControllerHome(Path(home)).admin_file))


async def admin(home: str, spec: dict[str, Any]) -> None:
    out = Path(spec["out"])
    deadline = time.monotonic() + WAIT
    while True:  # until the controller answers
        try:
            async with _admin(home) as client:
                await client.bundle()
            break
        except Exception:
            assert time.monotonic() < deadline, "the controller never answered"
            await asyncio.sleep(0.2)
    async with _admin(home) as client:
        for name in spec["routers"]:
            created = await client.create_router(name)
            (await ControllerClient.enroll(created.enrollment_token)).save(out / f"{name}.json")
        for name, dial, bind in spec["services"]:
            await client.create_service(name, dial_attributes=dial, bind_attributes=bind)
        for name, attributes in spec["identities"]:
            made = await client.create_identity(name, kind="workload", attributes=attributes)
            (await ControllerClient.enroll(made.enrollment_token)).save(out / f"{name}.json")
    say("ready")


async def edges(home: str, count: int) -> None:
    """Until the controller's graph has `count` links confirmed by both ends."""
    deadline = time.monotonic() + WAIT
    async with _admin(home) as client:
        while True:
            mesh = await client.mesh()
            pairs = {frozenset((e["from"], e["to"])) for e in mesh["edges"]}
            if len(pairs) >= count:
                names = sorted("-".join(sorted(p.rsplit("/", 1)[-1] for p in e)) for e in pairs)
                say("edges", links=names)
                return
            assert time.monotonic() < deadline, f"only {len(pairs)} links: {mesh}"
            await asyncio.sleep(0.3)


async def cost(home: str, router: str, value: float) -> None:
    async with _admin(home) as client:
        say("cost", **await client.set_router_cost(router, value))


async def disable(home: str, name: str) -> None:
    async with _admin(home) as client:
        started = time.time()
        await client.disable_identity(name)
        say("disabled", started=started, done=time.time())


# -- endpoints ------------------------------------------------------------------------


def _context(identity: str, routers: str, deadline: float = 30.0) -> Context:
    return Context.from_file(
        identity, routers=tuple(routers.split(",")), renew=False, resume_deadline=deadline
    )


async def host(identity: str, service: str, routers: str, deadline: float) -> None:
    wanted = len(routers.split(","))
    async with _context(identity, routers, deadline) as context:
        until = time.monotonic() + WAIT
        while True:  # until every router took the binding (they may still be starting)
            try:
                listener = await context.listen(service).start()
                if len(listener.bound_routers) == wanted:
                    break
                await listener.close()
            except UmbraError:
                pass
            assert time.monotonic() < until, "not bound at every router"
            await asyncio.sleep(0.3)
        say("bound", routers=listener.bound_routers)
        tasks: set[asyncio.Task[None]] = set()
        async for stream in listener:
            task = asyncio.get_running_loop().create_task(_echo(stream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


async def _echo(stream: Stream) -> None:
    digest, received, error = hashlib.sha256(), 0, None
    try:
        while data := await stream.read(1 << 20):
            digest.update(data)
            received += len(data)
            stream.write(data)
            await stream.drain()
        stream.write_eof()
    except UmbraError as exc:
        error = exc.code
    except ConnectionError as exc:
        error = repr(exc)
    say("stream", received=received, sha256=digest.hexdigest(), error=error)


async def _dial(context: Context, service: str) -> Stream:
    until = time.monotonic() + WAIT
    while True:
        try:
            return await context.dial(service)
        except DialError as exc:  # no route yet: the mesh is still forming
            assert time.monotonic() < until, f"never dialed: {exc.code}"
            await asyncio.sleep(0.3)


async def _gate(name: str, gates: set[str]) -> None:
    say(name)
    if name in gates:
        line = await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), WAIT)
        assert line, "stdin closed"


async def dial(
    identity: str, service: str, routers: str, mib: int, *, deadline: float, gates: set[str]
) -> None:
    size = mib << 20
    async with _context(identity, routers, deadline) as context:
        stream = await _dial(context, service)
        say("dialed", host=stream.peer.spiffe_id)
        sent = hashlib.sha256()

        async def send() -> None:
            for index, chunk in enumerate(pattern(size)):
                sent.update(chunk)
                stream.write(chunk)
                await stream.drain()
                if index == size // 3 // CHUNK:
                    await _gate("third", gates)
            await _gate("sent", gates)
            stream.write_eof()

        began = time.monotonic()
        sender = asyncio.get_running_loop().create_task(send())
        echoed, got, longest, last, error = hashlib.sha256(), 0, 0.0, began, None
        try:
            while data := await asyncio.wait_for(stream.read(1 << 20), WAIT):
                now = time.monotonic()
                longest, last = max(longest, now - last), now
                echoed.update(data)
                got += len(data)
            await sender
        except UmbraError as exc:  # what the application sees
            error = exc.code
            sender.cancel()
        say(
            "done",
            sent=sent.hexdigest(),
            echoed=echoed.hexdigest(),
            bytes=got,
            seconds=time.monotonic() - began,
            pause=longest,
            resumes=stream.get_extra_info("resumes"),
            host=stream.peer.spiffe_id,
            error=error,
        )
        if error is not None:  # what an application does next: dial again
            again = await _dial(context, service)
            again.write(b"again")
            answer = await asyncio.wait_for(again.readexactly(5), WAIT)
            say("again", host=again.peer.spiffe_id, echoed=answer.decode())


async def hold(identity: str, service: str, routers: str) -> None:
    async with _context(identity, routers) as context:
        stream = await _dial(context, service)
        stream.write(b"ping")
        assert await asyncio.wait_for(stream.readexactly(4), WAIT) == b"ping"
        say("ready", host=stream.peer.spiffe_id)
        try:
            while await asyncio.wait_for(stream.read(1 << 16), WAIT):
                pass
            say("closed", code=None)
        except UmbraError as exc:
            say("closed", code=exc.code, reason=str(exc))


def main(argv: list[str]) -> None:
    mode, *rest = argv
    if mode == "admin":
        run(admin(rest[0], json.loads(Path(rest[1]).read_text())))
    elif mode == "edges":
        run(edges(rest[0], int(rest[1])))
    elif mode == "cost":
        run(cost(rest[0], rest[1], float(rest[2])))
    elif mode == "disable":
        run(disable(rest[0], rest[1]))
    elif mode == "host":
        run(host(rest[0], rest[1], rest[2], float(rest[3]) if len(rest) > 3 else 30.0))
    elif mode == "dial":
        deadline = float(rest[4]) if len(rest) > 4 else 30.0
        gates = set(rest[5].split(",")) if len(rest) > 5 else set()
        run(dial(rest[0], rest[1], rest[2], int(rest[3]), deadline=deadline, gates=gates))
    elif mode == "hold":
        run(hold(rest[0], rest[1], rest[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    # The SDK's own lines (resumes, refusals) land in the log file beside stderr.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    main(sys.argv[1:])
