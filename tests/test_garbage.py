"""Manual cycle collection (`--manual-gc`): automatic collection is off inside the block, a
cycle made meanwhile lives until `collect` (the trainer's after a step, a worker's after a job),
and everything is as before after the block."""

from __future__ import annotations

import gc
import weakref

from common.garbage import manual_collection


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
        collection.collect()
        assert garbage() is None and collection.last_s > 0
    assert gc.isenabled()


def test_automatic_collection_is_left_alone_when_not_manual() -> None:
    with manual_collection(False) as collection:
        assert gc.isenabled()
        collection.collect()
        assert collection.last_s == 0.0
    assert gc.isenabled()


LEFT: list[weakref.ref] = []  # what the job below left in a cycle


def leave_a_cycle() -> None:
    LEFT.append(_cycle_garbage())
    kept = [[] for _ in range(100_000)]  # far past the automatic collector's threshold
    del kept


def test_a_worker_collects_after_each_job(redis_url: str) -> None:
    from redis import Redis

    from common.queue import SERIALIZER, rollout_queue
    from rollout_workers.worker import RolloutWorker

    connection = Redis.from_url(redis_url)
    queue = rollout_queue("gc-test", connection)
    queue.enqueue(leave_a_cycle)
    with manual_collection(True) as collection:
        worker = RolloutWorker(
            [queue], connection=connection, serializer=SERIALIZER, collection=collection
        )
        worker.work(burst=True, with_scheduler=False)
        [left] = LEFT
        assert (
            left() is None and collection.last_s > 0
        )  # the real RQ worker ran the job, then collected
