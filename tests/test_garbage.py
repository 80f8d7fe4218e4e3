"""Manual cycle collection (`--manual-gc`): automatic collection is off inside the block, a
cycle made meanwhile lives until `after_step`, and everything is as before after the block."""

from __future__ import annotations

import gc
import weakref

from trainer.garbage import manual_collection


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cycle collector frees it


def _cycle_garbage() -> weakref.ref:
    return weakref.ref(_Node())


def test_cycles_wait_for_the_step_and_automatic_collection_comes_back() -> None:
    assert gc.isenabled()
    with manual_collection(True) as collection:
        assert not gc.isenabled()
        garbage = _cycle_garbage()
        kept = [[] for _ in range(100_000)]  # far past the automatic collector's threshold
        assert garbage() is not None
        del kept
        collection.after_step()
        assert garbage() is None and collection.last_s > 0
    assert gc.isenabled()


def test_automatic_collection_is_left_alone_when_not_manual() -> None:
    with manual_collection(False) as collection:
        assert gc.isenabled()
        collection.after_step()
        assert collection.last_s == 0.0
    assert gc.isenabled()
