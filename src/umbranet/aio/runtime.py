"""Event loop choice: uvloop where available (2x relay speed, 8x less memory per TLS link,
per the anchors), the standard loop otherwise; and the process-wide allocator and collector
settings a long-running umbranet process wants."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def tune_allocator() -> None:
    """Keep glibc from trimming and re-growing the heap around every 64 KiB buffer.

    Measured in the benchmark profile: ~75k page faults per GB on a host without this,
    ~0 with it, and 22% less host CPU per GB. Both thresholds must be set together.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 16 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
    except (OSError, AttributeError):  # not glibc
        return


def tune_gc() -> None:
    """A first generation of 5,000 new container objects instead of 700.

    At 700 a young collection ran every dial or two, promoting whatever the dials in flight
    held (circuits, streams, buffers, futures) towards the full collections, which walk the
    whole heap. Measured per in-session dial and first round trip (`bench/ab_rr.py`,
    ``MODE=connect``, three parties in one process, streams freed by reference count): ~3 µs
    in the collector with the defaults, mostly a full collection of ~15 ms every few
    thousand dials; under 1 µs with this. Memory stays bounded: at most 5,000 new container
    objects wait between young collections. Not `gc.freeze`: it would keep for good
    whatever is alive when `run` starts, on every call (tests call `run` per test).
    """
    gc.set_threshold(_GC_YOUNG, _GC_MIDDLE, _GC_OLD)


_GC_YOUNG, _GC_MIDDLE, _GC_OLD = 5_000, 20, 10
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def new_event_loop() -> asyncio.AbstractEventLoop:
    tune_allocator()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep running without
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the fastest loop available, with the collector tuned (`tune_gc`)."""
    tune_gc()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
