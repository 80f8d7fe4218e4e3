"""Collecting cyclic garbage at chosen moments instead of automatically (`--manual-gc`).

Rollouts are millions of small objects (per completion token: a JSON dict and two lists on a
worker; an ART token object, its dict and two lists on the trainer), none of them in a reference
cycle: reference counting frees them. CPython's automatic cycle collector still walks every young
object each time 700 more are alive, and every live one each time the heap has grown by a
quarter: about half the trainer's ingest CPU (`benchmarks/ingest_scale.py --gc auto` against
`--gc manual`), and a sixth to a quarter of the worker's and trainer's CPU per token end to end
(`benchmarks/ingest_e2e.py --gc auto` against `--gc manual`).

Manual collection (as Megatron-LM's `--manual-gc`): start-up's objects are frozen out of the
collector's reach, automatic collection is off, and one collection runs when the heap is small:
after each step is checkpointed and its groups let go (trainer), after each job (worker).
Cyclic garbage made meanwhile waits for it: at most a step's or a job's worth (a rollout turn
leaves ~100 objects in cycles, ~30 KB).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def no_gc() -> Iterator[None]:
    """Packing and building allocate hundreds of thousands of objects, none of them cyclic: the
    cycle collector would run again and again over the whole heap (2-3x the cost)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def freeze_heap() -> None:
    """Move every object alive now (the imported modules: ~1M objects with torch and ART) out of
    the cycle collector's reach. Each full collection would walk them all, and one comes every
    ~250k surviving new objects: ~25 responses' worth of tokens. Call at start-up (once: later
    calls do nothing)."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


_frozen = False


class Collection:
    """What the trainer calls after each step and a worker after each job; a no-op when
    collection stays automatic."""

    def __init__(self, manual: bool) -> None:
        self.manual = manual
        self.last_s = 0.0  # how long the last collection took

    def collect(self) -> None:
        if self.manual:
            began = time.perf_counter()
            found = gc.collect()
            self.last_s = time.perf_counter() - began
            log.debug("collected %d objects in cycles in %.3fs", found, self.last_s)


@contextmanager
def manual_collection(manual: bool) -> Iterator[Collection]:
    """Automatic collection off for the block (on again after it) when `manual`."""
    enabled = gc.isenabled()
    if manual:
        freeze_heap()
        gc.disable()
    try:
        yield Collection(manual)
    finally:
        if manual and enabled:
            gc.enable()
