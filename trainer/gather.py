"""Gathering one step's rollouts: keep the queue fed, read results, watch every rollout.

Every wait is bounded: the dispatcher reruns rollouts that do not arrive in time and reports them
failed once their reruns are spent, so a step always completes. Results of a later step (a
leftover of an earlier life of the trainer) are kept in memory and handed to that step; results
of an earlier step are acknowledged away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common.wire import RolloutJob
from trainer.collector import Received, ResultCollector
from trainer.dispatch import Dispatcher
from trainer.groups import StepResults
from trainer.services import LocalServices

log = logging.getLogger(__name__)

POLL_MS = 500
PROGRESS_EVERY_S = 5.0

StatusPublisher = Callable[[int, str, int, list[str]], None]


@dataclass
class GatherStats:
    stale: int = 0  # results of a step already checkpointed


@dataclass
class Gatherer:
    collector: ResultCollector
    dispatcher: Dispatcher
    services: LocalServices
    rollouts_per_group: int
    max_concurrent: int
    watch_every_s: float
    publish_status: StatusPublisher
    later: dict[int, list[Received]] = field(default_factory=dict)  # step -> results held back

    async def gather(self, step: int, jobs: list[RolloutJob]) -> tuple[StepResults, GatherStats]:
        """Read results until every group of the step is complete (arrived or failed)."""
        results = StepResults(step, len(jobs), self.rollouts_per_group)
        stats = GatherStats()
        for received in self.later.pop(step, []):
            results.add(received.entry_id, received.result, received.trajectory)
        max_jobs = max(1, self.max_concurrent // self.rollouts_per_group)
        waiting = list(jobs)
        in_flight: dict[int, RolloutJob] = {}
        next_watch = next_progress = time.monotonic()
        while not results.complete:
            while waiting and len(in_flight) < max_jobs:
                job = waiting.pop(0)
                await asyncio.to_thread(self.dispatcher.start, job)
                in_flight[job.group_index] = job
            polled = await asyncio.to_thread(self.collector.poll, POLL_MS)
            self._take(step, polled.received, results, stats)
            for rejected in polled.rejected:
                if rejected.step == step:
                    self.dispatcher.reject(
                        rejected.group_index, rejected.rollout_index, rejected.reason
                    )
            for group_index in [g for g in in_flight if results.group_complete(g)]:
                del in_flight[group_index]
                self.dispatcher.finish(group_index)

            now = time.monotonic()
            if now >= next_watch:
                next_watch = now + self.watch_every_s
                self.services.check()
                failed = await asyncio.to_thread(self.dispatcher.watch, results)
                for group_index, rollouts in failed.items():
                    for index, error in rollouts.items():
                        log.error(
                            "step %d group %d rollout %d failed for good: %s: %s",
                            step, group_index, index, error.type, error.message,
                        )  # fmt: skip
                        results.fail_rollout(group_index, index, error)
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY_S
                waiting_for = self.dispatcher.waiting_for(results)
                self.publish_status(step, "gathering", len(in_flight), waiting_for)
                log.info(
                    "step %d | rollouts %d/%d (%d failed) | jobs in flight %d, waiting %d%s",
                    step,
                    results.received,
                    len(jobs) * self.rollouts_per_group,
                    results.failed,
                    len(in_flight),
                    len(waiting),
                    "".join(f"\n  waiting for {line}" for line in waiting_for),
                )
        for group_index in list(in_flight):
            self.dispatcher.finish(group_index)
        return results, stats

    def _take(
        self, step: int, received: list[Received], results: StepResults, stats: GatherStats
    ) -> None:
        for item in received:
            result = item.result
            if result.step < step:  # a leftover of a step already checkpointed
                stats.stale += 1
                self.collector.ack([item.entry_id])
            elif result.step > step:  # a later step's, from an earlier life: kept for it
                self.later.setdefault(result.step, []).append(item)
            else:
                results.add(item.entry_id, result, item.trajectory)
