"""Collecting cyclic garbage once per step instead of automatically (`--manual-gc`).

A step's rollouts are tens of millions of small objects (an ART token object, its dict and two
lists per completion token), none of them in a reference cycle: reference counting frees them.
CPython's automatic cycle collector still walks every live object each time the heap has grown
by a quarter, so while a step's groups arrive it walks them again and again: about half the
trainer's ingest CPU (`benchmarks/ingest_scale.py --gc auto` against `--gc manual`). Manual
collection (as Megatron-LM's `--manual-gc`): start-up's objects are frozen out of the
collector's reach, automatic collection is off, and one collection runs after each step is
checkpointed, when its groups have been let go, so the heap it walks is small. Cyclic garbage
made meanwhile waits for that collection: at most one step's worth.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from common.packed import freeze_heap

log = logging.getLogger(__name__)


class Collection:
    """What the loop calls after each step; a no-op when collection stays automatic."""

    def __init__(self, manual: bool) -> None:
        self.manual = manual
        self.last_s = 0.0  # how long the last collection took

    def after_step(self) -> None:
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
