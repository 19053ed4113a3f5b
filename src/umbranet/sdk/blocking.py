"""A blocking facade over the async SDK, for code that does not run an event loop.

The context runs its own event loop in a daemon thread; every call hands work to it and
waits. Streams behave like blocking sockets (`sendall`, `recv`, `shutdown`).

Why `sendall` and `recv` are not coroutines handed over with `run_coroutine_threadsafe`: that
builds a Task, a concurrent Future and its Condition for every call, ~100 us per round trip
measured on the benchmark VM. Instead the loop thread runs a plain callback that does the
work at once when it can (data already buffered, credit and link free), and only otherwise
waits on the stream's own wake-up future; the result comes back through a pre-acquired lock,
the cheapest handoff between two threads in CPython.

    with umbranet.sdk.blocking.connect("app.json") as ctx:
        with ctx.dial("echo") as stream:
            stream.sendall(b"hi")
            print(stream.recv(100))
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from umbranet.aio.runtime import new_event_loop
from umbranet.proto.e2e import PeerIdentity
from umbranet.sdk.context import Context
from umbranet.sdk.listener import Listener
from umbranet.sdk.stream import Stream

T = TypeVar("T")
_Fn = Callable[["_Handoff"], None]


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

    def run_soon(self, fn: _Fn, timeout: float | None = None) -> Any:
        """Run `fn(handoff)` on the loop thread; block until it calls `handoff.done`/`fail`,
        or raise TimeoutError after `timeout` seconds (then `fn`'s pending work is dropped:
        it must check `handoff.abandoned` before taking anything)."""
        handoff = _Handoff()
        self._loop.call_soon_threadsafe(handoff.run, fn)
        return handoff.wait(self._loop, timeout)

    def post(self, fn: Callable[[], None]) -> None:
        """Run `fn()` on the loop thread without waiting for it: for calls that cannot fail
        (an end of data, a close), whose order with later calls the loop keeps."""
        self._loop.call_soon_threadsafe(fn)

    async def _shutdown(self) -> None:
        await self._context.close()
        # What still runs on the loop (socket-bridge pumps, for one) ends here, as under
        # asyncio.run: a task left pending on a closed loop fails when it is collected.
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    def dial(self, service: str, timeout: float = 10.0) -> BlockingStream:
        context = self._context

        def dial(handoff: _Handoff) -> None:  # `run_soon`, not `call`: see the module doc
            handoff.await_(context.dial(service, timeout))

        return BlockingStream(self, self.run_soon(dial))

    def listen(
        self, service: str, backlog: int = 128, *, ports: frozenset[int] | None = None
    ) -> BlockingListener:
        """Host `service` (only for dialers granted one of `ports`, when given)."""

        async def start() -> Listener:
            return await self._context.listen(service, backlog, ports=ports).start()

        return BlockingListener(self, self.call(start()))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self.call(self._shutdown())
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
        # A subclass that filters what `read` returns (e.g. the HTTP gate) must be read
        # through `read`; only the plain stream may be read with `read_nowait`.
        self._plain = type(stream).read is Stream.read
        self._timeout: float | None = None

    def settimeout(self, timeout: float | None) -> None:
        """Seconds `recv` waits for data before raising TimeoutError (None: forever)."""
        self._timeout = timeout

    @property
    def peer(self) -> PeerIdentity:
        return self._stream.peer

    def sendall(self, data: bytes) -> None:
        stream = self._stream

        def send(handoff: _Handoff) -> None:
            stream.write(data)
            if stream.must_drain():
                handoff.await_(stream.drain())
            else:
                handoff.done(None)

        self._owner.run_soon(send)

    write = sendall

    def recv(self, n: int, timeout: float | None = None) -> bytes:
        """Up to `n` bytes, b"" at EOF; TimeoutError after `timeout` (or `settimeout`'s)
        seconds without data, and then nothing was taken from the stream."""
        stream = self._stream

        def receive(handoff: _Handoff) -> None:
            if handoff.abandoned:
                return
            data = stream.read_nowait(n) if self._plain else None
            if data is not None:
                handoff.done(data)
            elif self._plain:
                stream.wake_waiter().add_done_callback(lambda _: handoff.run(receive))
            else:
                handoff.await_(stream.read(n))

        result: bytes = self._owner.run_soon(
            receive, timeout if timeout is not None else self._timeout
        )
        return result

    read = recv

    def readexactly(self, n: int) -> bytes:
        return self._owner.call(self._stream.readexactly(n))

    def shutdown_write(self) -> None:
        self._owner.post(self._stream.write_eof)

    def close(self) -> None:
        self._owner.post(self._stream.close)

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


class _Handoff:
    """One blocking call's result, passed from the loop thread to the caller through a lock."""

    __slots__ = ("_completed", "_error", "_lock", "_task", "_value", "abandoned")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # released once, by `done` or `fail`, on the loop thread
        self._value: Any = None
        self._error: BaseException | None = None
        self._completed = False
        self._task: asyncio.Future[Any] | None = None
        self.abandoned = False  # the caller timed out; pending work must take nothing

    def run(self, fn: _Fn) -> None:
        """Loop thread: call `fn`; an exception it raises is the caller's result."""
        try:
            fn(self)
        except BaseException as exc:  # handed to the caller and raised there
            self.fail(exc)

    def done(self, value: Any) -> None:
        if not self._completed:
            self._completed = True
            self._value = value
            self._lock.release()

    def fail(self, error: BaseException) -> None:
        if not self._completed:
            self._completed = True
            self._error = error
            self._lock.release()

    def abandon(self) -> None:
        """Loop thread: the caller timed out. Give up unless a result already exists (a
        task that finished but whose callback has not run yet holds data: deliver it)."""
        if self._completed or (self._task is not None and self._task.done()):
            return
        self.abandoned = True
        if self._task is not None:
            self._task.cancel()
        self.fail(TimeoutError("timed out waiting for the stream"))

    def await_(self, awaitable: Coroutine[Any, Any, Any]) -> None:
        """Loop thread: finish with what a coroutine returns (the rare, waiting path)."""
        task = asyncio.ensure_future(awaitable)
        self._task = task
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            self.fail(asyncio.CancelledError())
        elif (error := task.exception()) is not None:
            self.fail(error)
        else:
            self.done(task.result())

    def wait(self, loop: asyncio.AbstractEventLoop, timeout: float | None = None) -> Any:
        """Caller thread: block until the loop thread finished the call (or, after
        `timeout`, until it either finished meanwhile or agreed to abandon it)."""
        if not self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            loop.call_soon_threadsafe(self.abandon)
            self._lock.acquire()
        if self._error is not None:
            raise self._error
        return self._value


def connect(identity_path: str | Path, **options: Any) -> BlockingContext:
    """A blocking context for the identity file at `identity_path`."""
    return BlockingContext(identity_path, **options)
