"""Gathering rollouts: the groups started and not yet settled, filled as results arrive.

Every wait is bounded: the dispatcher reruns rollouts that do not arrive in time and reports them
failed once their reruns are spent, so every started group completes. Results of a group not
started yet (a leftover of an earlier life of the trainer) are held until it starts; results of
a settled group (trained, dropped or cancelled) are acknowledged away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common.wire import RolloutJob
from trainer.collector import PartReceived, Polled, Received, ResultCollector
from trainer.dispatch import Dispatcher
from trainer.groups import GroupKey, GroupResults, group_key
from trainer.services import LocalServices

log = logging.getLogger(__name__)

POLL_MS = 500
PROGRESS_EVERY_S = 5.0

# step, phase, groups in flight, what they wait for
StatusPublisher = Callable[[int, str, int, list[str]], None]


@dataclass
class Gatherer:
    collector: ResultCollector
    dispatcher: Dispatcher
    services: LocalServices
    watch_every_s: float
    is_settled: Callable[[GroupKey], bool]
    publish_status: StatusPublisher
    groups: dict[GroupKey, GroupResults] = field(default_factory=dict)  # started, unsettled
    # what arrived for groups not started yet (an earlier life of the trainer started them)
    later: dict[GroupKey, list[Received | PartReceived]] = field(default_factory=dict)
    stale_results: int = 0  # results of settled groups, acknowledged away
    _next_watch: float = 0.0
    _next_progress: float = 0.0

    def start(self, job: RolloutJob) -> None:
        """Enqueue (or adopt) the group's job and watch for its rollouts."""
        group = GroupResults(self.dispatcher.start(job))
        self.groups[group.key] = group
        for item in self.later.pop(group.key, []):
            _add(group, item)
        self._mark_complete(group)

    @property
    def in_flight(self) -> list[GroupResults]:
        return [g for g in self.groups.values() if not g.complete]

    def complete(self) -> list[GroupResults]:
        """Complete groups, in the order they completed."""
        done = [g for g in self.groups.values() if g.complete]
        return sorted(done, key=lambda g: g.completed_at or 0.0)

    def settle(self, key: GroupKey) -> list[str]:
        """A complete group leaves (trained or dropped; the dispatcher let go of it when it
        completed); returns its entries, to acknowledge once the step that settled it is
        checkpointed."""
        return self.groups.pop(key).entry_ids

    def cancel(self, key: GroupKey) -> list[str]:
        """The group will never train: its jobs are told to stop; returns its entries."""
        self.dispatcher.cancel(key)
        return self.groups.pop(key).entry_ids

    async def read(self) -> Polled:
        """Results not yet taken, waiting up to POLL_MS for new ones (in a thread: the event
        loop, and a `train()` running in it, carry on meanwhile)."""
        return await asyncio.to_thread(self.collector.poll, POLL_MS)

    def take(self, polled: Polled, step: int, phase: str) -> None:
        """File what was read, and every `watch_every_s` requeue lost jobs and rerun late
        rollouts."""
        for item in [*polled.parts, *polled.received]:  # replies before the results using them
            self._take(item)
        for rejected in polled.rejected:
            key = (rejected.step, rejected.group_index)
            if key in self.groups:
                self.dispatcher.reject(key, rejected.rollout_index, rejected.reason)
        now = time.monotonic()
        if now >= self._next_watch:
            self._next_watch = now + self.watch_every_s
            self.services.check()
            failed = self.dispatcher.watch(self.groups)
            for key, rollouts in failed.items():
                group = self.groups[key]
                for index, error in rollouts.items():
                    log.error(
                        "group %s rollout %d failed for good: %s: %s",
                        group.job.job_id, index, error.type, error.message,
                    )  # fmt: skip
                    group.fail_rollout(index, error)
                self._mark_complete(group)
        if now >= self._next_progress:
            self._next_progress = now + PROGRESS_EVERY_S
            self._progress(step, phase)

    def _take(self, item: Received | PartReceived) -> None:
        """Filed with its group; acknowledged away when the group is settled; held for a group
        not started yet. A reply posted ahead goes with its group, claimed or not."""
        if isinstance(item, PartReceived):
            key = (item.step, item.group_index)
        else:
            key = group_key(item.result)
        group = self.groups.get(key)
        if group is not None:
            _add(group, item)
            self._mark_complete(group)
        elif self.is_settled(key):
            if isinstance(item, Received):
                self.stale_results += 1
            self.collector.ack([item.entry_id])
        else:  # an earlier life started this group; this one has not yet
            self.later.setdefault(key, []).append(item)

    def _mark_complete(self, group: GroupResults) -> None:
        if group.complete and group.completed_at is None:
            group.completed_at = time.monotonic()
            self.dispatcher.finish(group.key)

    def _progress(self, step: int, phase: str) -> None:
        waiting_for = self.dispatcher.waiting_for(self.groups)
        in_flight = self.in_flight
        self.publish_status(step, phase, len(in_flight), waiting_for)
        received = sum(len(g.results) for g in self.groups.values())
        failed = sum(g.failed for g in self.groups.values())
        log.info(
            "step %d %s | groups: %d complete, %d in flight | rollouts %d received (%d failed)%s",
            step,
            phase,
            len(self.groups) - len(in_flight),
            len(in_flight),
            received,
            failed,
            "".join(f"\n  waiting for {line}" for line in waiting_for),
        )


def _add(group: GroupResults, item: Received | PartReceived) -> None:
    if isinstance(item, PartReceived):
        group.entry_ids.append(item.entry_id)  # acknowledged with the group
    else:
        group.add(item.entry_id, item.result, item.trajectory)
