"""The client side of the scale rows (`bench.scale`), run inside namespace A.

Two commands, each bounded in count and time and printing JSON lines on stdout:

- `hold --identity F --contexts K --stages N1,N2,... --stage-seconds T`: K SDK contexts
  (K router links) open end-to-end streams to `bench-echo` until N1 are open, each with one
  64 B round trip, then leave them idle; print `{"stage": i, "held": n, ...}` and wait for a
  line on stdin (`next` to grow to the next stage, anything else or EOF to stop). The harness
  reads the router's memory between stages. A stage that cannot be reached (dial errors, or
  T seconds from the first stage's start used up) is reported with `"ok": false` and ends
  the command.
- `controller --home H --identity F --enrollments K --tickets M --concurrency C`: create K
  identities with one-time tokens through the admin API, enroll all K concurrently (each
  enrollee makes its keys and CSR, as `umbra enroll` does), then request M dial tickets over
  C mTLS clients; print one JSON object with the rates.

Why a separate process from the host: the router's memory per circuit is what is measured,
and client/host memory must not be mistaken for it (their RSS is reported separately).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.paths.umbranet_setup import DIAL_ATTRIBUTE, SERVICES
from umbranet.aio.runtime import run
from umbranet.client.controller import ControllerClient, ControllerError
from umbranet.controller.home import ControllerHome
from umbranet.pki import IdentityFile
from umbranet.sdk import Context, Stream, UmbraError

__all__ = ["main"]

PAYLOAD = b"s" * 64
DIAL_CONCURRENCY = 64


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.scale_client")
    sub = parser.add_subparsers(dest="cmd", required=True)
    hold = sub.add_parser("hold")
    hold.add_argument("--identity", required=True, type=Path)
    hold.add_argument("--contexts", type=int, default=4)
    hold.add_argument("--stages", required=True)
    hold.add_argument("--stage-seconds", type=float, default=600.0, help="all stages together")
    ctl = sub.add_parser("controller")
    ctl.add_argument("--home", required=True, type=Path)
    ctl.add_argument("--identity", required=True, type=Path)
    ctl.add_argument("--enrollments", type=int, default=200)
    ctl.add_argument("--tickets", type=int, default=2000)
    ctl.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    if args.cmd == "hold":
        stages = [int(x) for x in args.stages.split(",") if x.strip()]
        run(_hold(args.identity, args.contexts, stages, args.stage_seconds))
        # Tens of thousands of open streams: leave without closing each one (the harness
        # stops the router and host next; nothing here holds state worth a clean close).
        sys.stdout.flush()
        os._exit(0)
    result = run(
        _controller(args.home, args.identity, args.enrollments, args.tickets, args.concurrency)
    )
    print(json.dumps(result), flush=True)
    return 0


# -- hold: many idle circuits ----------------------------------------------------------------


async def _hold(identity: Path, contexts: int, stages: list[int], stage_seconds: float) -> None:
    ctxs = [Context.from_file(identity) for _ in range(max(1, contexts))]
    streams: list[Stream] = []
    errors: list[str] = []
    for ctx in ctxs:
        await ctx.__aenter__()
    # Warm up: each link up and the dial ticket cached, so stage 0 is the router's baseline
    # with every link open and no circuit.
    for ctx in ctxs:
        warm = await _one(ctx, errors)
        if warm is not None:
            warm.write_eof()
    _emit({"stage": 0, "held": 0, "ok": not errors, "errors": errors[:5]})
    if errors or not await _next():
        return
    deadline = time.monotonic() + stage_seconds  # for all stages together
    for i, target in enumerate(stages, 1):
        t0 = time.monotonic()
        ok = await _grow(ctxs, streams, target, errors, deadline)
        _emit(
            {
                "stage": i,
                "held": len(streams),
                "target": target,
                "ok": ok,
                "seconds": round(time.monotonic() - t0, 2),
                "errors": errors[:5],
                "error_count": len(errors),
            }
        )
        # Wait on the last stage too: the harness reads memory while the circuits are held.
        if not ok or not await _next():
            return


async def _grow(
    ctxs: list[Context], streams: list[Stream], target: int, errors: list[str], deadline: float
) -> bool:
    """Open streams (round robin over the contexts) until `target` are held."""
    sem = asyncio.Semaphore(DIAL_CONCURRENCY)
    failed = asyncio.Event()

    async def one(index: int) -> None:
        async with sem:
            if failed.is_set() or time.monotonic() > deadline:
                failed.set()
                return
            stream = await _one(ctxs[index % len(ctxs)], errors)
            if stream is None:
                failed.set()
            else:
                streams.append(stream)

    start = len(streams)
    await asyncio.gather(*(one(i) for i in range(start, target)))
    return len(streams) >= target and not failed.is_set()


async def _one(ctx: Context, errors: list[str]) -> Stream | None:
    try:
        stream = await ctx.dial(SERVICES["echo"])
        stream.write(PAYLOAD)
        await stream.drain()
        await asyncio.wait_for(stream.readexactly(len(PAYLOAD)), 30)
    except (UmbraError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        errors.append(repr(exc)[:200])
        return None
    return stream


async def _next() -> bool:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return bool(line.strip() == "next")


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


# -- controller: enrollments/s and tickets/s -------------------------------------------------


async def _controller(
    home: Path, identity: Path, enrollments: int, tickets: int, concurrency: int
) -> dict[str, Any]:
    admin = IdentityFile.load(ControllerHome(home).admin_file)
    tag = os.urandom(3).hex()
    errors: list[str] = []
    t0 = time.monotonic()
    tokens: list[str] = []
    async with ControllerClient(admin) as client:
        for i in range(enrollments):
            made = await client.create_identity(
                f"scale-{tag}-{i}", kind="workload", attributes=[DIAL_ATTRIBUTE]
            )
            tokens.append(made.enrollment_token)
    created_s = time.monotonic() - t0

    sem = asyncio.Semaphore(concurrency)

    async def enroll(token: str) -> bool:
        async with sem:
            try:
                await ControllerClient.enroll(token)
            except (ControllerError, OSError) as exc:
                errors.append(f"enroll: {exc!r}"[:200])
                return False
            return True

    t1 = time.monotonic()
    enrolled = sum(await asyncio.gather(*(enroll(t) for t in tokens)))
    enroll_s = time.monotonic() - t1

    dialer = IdentityFile.load(identity)
    per_client = [tickets // concurrency + (i < tickets % concurrency) for i in range(concurrency)]

    async def ticket_worker(n: int) -> int:
        done = 0
        async with ControllerClient(dialer) as client:
            await client.me()  # TLS session up before the clock starts counting tickets
            await ready.wait()
            for _ in range(n):
                try:
                    await client.ticket(SERVICES["echo"], "dial")
                    done += 1
                except ControllerError as exc:
                    errors.append(f"ticket: {exc!r}"[:200])
        return done

    ready = asyncio.Event()
    workers = [asyncio.ensure_future(ticket_worker(n)) for n in per_client]
    await asyncio.sleep(1.0)
    t2 = time.monotonic()
    ready.set()
    granted = sum(await asyncio.gather(*workers))
    ticket_s = time.monotonic() - t2
    return {
        "identities_created": len(tokens),
        "create_s": round(created_s, 3),
        "enrolled": enrolled,
        "enroll_s": round(enroll_s, 3),
        "enrollments_per_s": enrolled / enroll_s if enroll_s > 0 else 0.0,
        "tickets": granted,
        "ticket_s": round(ticket_s, 3),
        "tickets_per_s": granted / ticket_s if ticket_s > 0 else 0.0,
        "concurrency": concurrency,
        "errors": errors[:5],
        "error_count": len(errors),
    }


if __name__ == "__main__":
    raise SystemExit(main())
