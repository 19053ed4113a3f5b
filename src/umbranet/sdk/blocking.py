"""A blocking facade over the async SDK, for code that does not run an event loop.

The context runs its own event loop in a daemon thread; every call hands a coroutine to it
and waits. Streams behave like blocking sockets (`sendall`, `recv`, `shutdown`).

    with umbranet.sdk.blocking.connect("app.json") as ctx:
        with ctx.dial("echo") as stream:
            stream.sendall(b"hi")
            print(stream.recv(100))
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from umbranet.aio.runtime import new_event_loop
from umbranet.proto.e2e import PeerIdentity
from umbranet.sdk.context import Context
from umbranet.sdk.listener import Listener
from umbranet.sdk.stream import Stream

T = TypeVar("T")


class BlockingContext:
    """A Context driven from a private event-loop thread."""

    def __init__(self, identity_path: str | Path, **options: Any) -> None:
        self._loop = new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="umbranet-sdk"
        )
        self._thread.start()
        self._context: Context = self.call(self._make(Path(identity_path), options))

    async def _make(self, path: Path, options: dict[str, Any]) -> Context:
        return await Context.from_file(path, **options).__aenter__()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the context's loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    def dial(self, service: str, timeout: float = 10.0) -> BlockingStream:
        return BlockingStream(self, self.call(self._context.dial(service, timeout)))

    def listen(self, service: str, backlog: int = 128) -> BlockingListener:
        async def start() -> Listener:
            return await self._context.listen(service, backlog).start()

        return BlockingListener(self, self.call(start()))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self.call(self._context.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> BlockingContext:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BlockingStream:
    """A stream with socket-like blocking methods."""

    def __init__(self, owner: BlockingContext, stream: Stream) -> None:
        self._owner = owner
        self._stream = stream

    @property
    def peer(self) -> PeerIdentity:
        return self._stream.peer

    def sendall(self, data: bytes) -> None:
        async def send() -> None:
            self._stream.write(data)
            await self._stream.drain()

        self._owner.call(send())

    write = sendall

    def recv(self, n: int) -> bytes:
        return self._owner.call(self._stream.read(n))

    read = recv

    def readexactly(self, n: int) -> bytes:
        return self._owner.call(self._stream.readexactly(n))

    def shutdown_write(self) -> None:
        async def eof() -> None:
            self._stream.write_eof()

        self._owner.call(eof())

    def close(self) -> None:
        async def close() -> None:
            self._stream.close()

        self._owner.call(close())

    def __enter__(self) -> BlockingStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BlockingListener:
    """Iterate to accept streams, blocking."""

    def __init__(self, owner: BlockingContext, listener: Listener) -> None:
        self._owner = owner
        self._listener = listener

    def accept(self, timeout: float | None = None) -> BlockingStream:
        return BlockingStream(self._owner, self._owner.call(self._listener.accept(), timeout))

    def __iter__(self) -> Iterator[BlockingStream]:
        while True:
            yield self.accept()

    def close(self) -> None:
        self._owner.call(self._listener.close())


def connect(identity_path: str | Path, **options: Any) -> BlockingContext:
    """A blocking context for the identity file at `identity_path`."""
    return BlockingContext(identity_path, **options)
