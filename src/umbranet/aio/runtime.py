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
    """Make the cyclic collector cheap for a long-running process that is mostly done
    importing and setting up when its loop starts.

    Measured per in-session dial and first round trip (`bench/ab_rr.py`, ``MODE=connect``):
    with the defaults the collector cost ~32 µs (most of it full collections walking every
    object the imports made), with this ~7 µs. `freeze` moves what exists now (modules,
    classes, functions) out of the collector's sight, so a full collection walks only what
    was made since; a first generation of 5,000 lets the objects of a dial (circuit, stream,
    buffers, futures) die by reference count before a collection promotes them. Memory stays
    bounded: at most 5,000 new container objects wait between young collections (the
    default is 700); what `freeze` hides stays for the process's life, which it would
    anyway, apart from the little cyclic garbage importing left (not collected first: a
    full collection here would add to every command's start).
    """
    gc.freeze()
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
