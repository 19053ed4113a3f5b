"""A hosting or dialing process for the multi-process overlay tests.

python overlay_peer.py host IDENTITY SERVICE   -> echoes every stream, prints its sha256
python overlay_peer.py dial IDENTITY SERVICE MiB -> sends random bytes, checks the echo,
                                                   prints JSON with hashes and timings
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time

from umbranet.aio.runtime import run
from umbranet.sdk import Context, Stream


async def host(identity: str, service: str) -> None:
    async with Context.from_file(identity) as context:
        listener = await context.listen(service).start()
        print(json.dumps({"event": "bound", "pid": os.getpid()}), flush=True)
        async for stream in listener:
            asyncio.get_running_loop().create_task(_echo(stream))


async def _echo(stream: Stream) -> None:
    digest = hashlib.sha256()
    received = 0
    while data := await stream.read(1 << 20):
        digest.update(data)
        received += len(data)
        stream.write(data)
        await stream.drain()
    stream.write_eof()
    print(
        json.dumps(
            {
                "event": "stream",
                "peer": stream.peer.spiffe_id,
                "received": received,
                "sha256": digest.hexdigest(),
            }
        ),
        flush=True,
    )


async def dial(identity: str, service: str, mebibytes: int) -> None:
    size = mebibytes << 20
    async with Context.from_file(identity) as context:
        started = time.perf_counter()
        stream = await context.dial(service)
        stream.write(b"!")
        await stream.readexactly(1)
        dial_rtt = time.perf_counter() - started
        payload = os.urandom(size)
        sent = hashlib.sha256(b"!" + payload).hexdigest()
        echoed = hashlib.sha256(b"!")

        async def send() -> None:
            view = memoryview(payload)
            for offset in range(0, size, 1 << 20):
                stream.write(view[offset : offset + (1 << 20)])
                await stream.drain()
            stream.write_eof()

        began = time.perf_counter()
        sender = asyncio.get_running_loop().create_task(send())
        received = 0
        while data := await stream.read(1 << 20):
            echoed.update(data)
            received += len(data)
        await sender
        elapsed = time.perf_counter() - began
        print(
            json.dumps(
                {
                    "sent_sha256": sent,
                    "echo_sha256": echoed.hexdigest(),
                    "echoed": received,
                    "seconds": elapsed,
                    "mb_per_s_each_way": size / elapsed / 1e6,
                    "dial_first_rtt_ms": dial_rtt * 1000,
                    "host": stream.peer.spiffe_id,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    mode, identity_file, service_name = sys.argv[1:4]
    if mode == "host":
        run(host(identity_file, service_name))
    else:
        run(dial(identity_file, service_name, int(sys.argv[4])))
