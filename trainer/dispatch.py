"""Putting one step's scenario groups on the queue, and watching every rollout until it arrives.

Job ids are deterministic, so after a trainer restart `start` finds the jobs an earlier life
enqueued (queued, running or finished, reruns included) instead of running them twice. Each watch
tick, per attempt at a group (`<group job id>` then `-a1`, `-a2` for reruns):
- a running job whose lease has expired (its worker was killed or froze) goes back to the front
  of the queue;
- a job a worker took off the queue but never started (it died in between; RQ keeps it in its
  intermediate list with status `queued`) goes back to the front after `lease_ttl_s`;
- a rollout that has not arrived `rollout_deadline_s` after its job started, or a short grace
  after its job ended (finished, failed, vanished), or whose result was rejected, is rerun
  alone in a new attempt; after `rollout_reruns` reruns it is reported failed with the reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from rq import Queue
from rq.job import Job, JobStatus

from common import keys
from common.queue import (
    cancel_group,
    enqueue_group,
    fetch_job,
    is_waiting_in_queue,
    read_job_argument,
    requeue_dequeued_job,
    requeue_started_job,
)
from common.wire import ErrorInfo, RolloutJob
from trainer.groups import GroupKey, GroupResults, group_key

log = logging.getLogger(__name__)

_ALIVE = {
    JobStatus.QUEUED,
    JobStatus.STARTED,
    JobStatus.DEFERRED,
    JobStatus.SCHEDULED,
    JobStatus.FINISHED,
}
_DEAD = {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


@dataclass
class Attempt:
    """One RQ job running some (or all) of a group's rollouts, as last seen."""

    job: RolloutJob
    state: str = "queued"
    started_at: float | None = None  # wall time its current run started
    ended_at: float | None = None  # wall time it was first seen finished, failed or gone
    dequeued_since: float | None = None  # first seen taken off the queue but not started
    error: ErrorInfo | None = None  # why it ended without its rollouts
    rejected: dict[int, str] = field(default_factory=dict)  # rollout index -> why

    @property
    def id(self) -> str:
        return self.job.rq_job_id

    def gave_up_on(self, index: int, now: float, deadline_s: float, grace_s: float) -> bool:
        """Whether this attempt will not deliver rollout `index` any more."""
        if index not in self.job.indexes or index in self.rejected:
            return True
        if self.ended_at is not None:
            return now - self.ended_at >= grace_s
        return self.started_at is not None and now - self.started_at >= deadline_s

    def reason(self, index: int, deadline_s: float) -> ErrorInfo:
        if index in self.rejected:
            return ErrorInfo(type="ResultRejected", message=self.rejected[index])
        if self.error is not None:
            return self.error
        if self.ended_at is not None:
            return ErrorInfo(
                type="ResultLost", message=f"job {self.id} ended but rollout {index} never arrived"
            )
        return ErrorInfo(
            type="RolloutDeadline",
            message=f"no result {deadline_s:.0f}s after job {self.id} started",
        )


@dataclass
class Dispatcher:
    queue: Queue
    job_timeout_s: int
    job_retries: int
    lease_ttl_s: int
    rollout_deadline_s: float | None = None  # None: job_timeout_s
    rollout_reruns: int = 2
    requeued: int = 0  # jobs put back after their worker was lost
    reruns: int = 0  # rollouts rerun alone
    attempts: dict[GroupKey, list[Attempt]] = field(default_factory=dict)

    @property
    def deadline_s(self) -> float:
        return float(self.rollout_deadline_s or self.job_timeout_s)

    def start(self, job: RolloutJob) -> RolloutJob:
        """Enqueue a group's first attempt unless it exists, and adopt reruns an earlier life of
        the trainer enqueued. Returns the job in use: an adopted one keeps the policy it was
        pinned to."""
        adopted = self._adopt(job)
        if adopted is None:
            self.ensure_enqueued(job)
        job = adopted or job
        attempts = [Attempt(job)]
        for number in range(1, self.rollout_reruns + 1):
            existing = fetch_job(keys.attempt_job_id(job.job_id, number), self.queue.connection)
            if existing is None:
                break
            try:
                attempts.append(Attempt(read_job_argument(existing.args[0])))
            except Exception as exc:  # a job of ours we cannot read: stop adopting there
                log.error("cannot read rerun %s (%s); ignoring it", existing.id, exc)
                break
        self.attempts[group_key(job)] = attempts
        return job

    def _adopt(self, job: RolloutJob) -> RolloutJob | None:
        """The live first attempt an earlier life of the trainer enqueued, read back from RQ."""
        existing = fetch_job(job.rq_job_id, self.queue.connection)
        if existing is None or existing.get_status(refresh=False) not in _ALIVE:
            return None
        try:
            return read_job_argument(existing.args[0])
        except Exception as exc:  # a job of ours we cannot read: replace it
            log.error("cannot read job %s (%s); enqueueing it again", existing.id, exc)
            existing.delete()
            return None

    def finish(self, key: GroupKey) -> None:
        """The group is complete: reruns still waiting in the queue are cancelled."""
        for attempt in self.attempts.pop(key, [])[1:]:
            if attempt.ended_at is None and attempt.started_at is None:
                job = fetch_job(attempt.id, self.queue.connection)
                if job is not None and is_waiting_in_queue(self.queue, job.id):
                    job.cancel()

    def cancel(self, key: GroupKey) -> None:
        """The group will never train: every attempt is told to stop (a waiting one never
        runs; a running one stops between turns, freeing its sandbox and policy slots)."""
        attempts = self.attempts.pop(key, [])
        if attempts:
            cancel_group(self.queue, attempts[0].job, self.job_timeout_s)

    def ensure_enqueued(self, job: RolloutJob) -> bool:
        """Enqueue the attempt unless a live job with its id exists. True when newly enqueued."""
        existing = fetch_job(job.rq_job_id, self.queue.connection)
        if existing is not None and existing.get_status(refresh=False) in _ALIVE:
            return False
        if existing is not None:
            existing.delete()
        enqueue_group(self.queue, job, self.job_timeout_s, self.job_retries)
        return True

    def reject(self, key: GroupKey, rollout_index: int, reason: str) -> None:
        """A result of this rollout could not be used: the attempts that sent it are done with
        it, so the next watch tick reruns it."""
        for attempt in self.attempts.get(key, []):
            if rollout_index in attempt.job.indexes:
                attempt.rejected[rollout_index] = reason

    def watch(self, groups: dict[GroupKey, GroupResults]) -> dict[GroupKey, dict[int, ErrorInfo]]:
        """One pass over every attempt of the groups still missing rollouts: requeue lost jobs,
        rerun overdue rollouts; returns the rollouts failed for good (group -> index -> why)."""
        failed: dict[GroupKey, dict[int, ErrorInfo]] = {}
        now = time.time()
        grace_s = self.lease_ttl_s / 2
        for key, attempts in self.attempts.items():
            missing = groups[key].missing() if key in groups else []
            if not missing:
                continue
            for attempt in attempts:
                if attempt.ended_at is None:
                    self._refresh(attempt, now)
            overdue = [
                i
                for i in missing
                if all(a.gave_up_on(i, now, self.deadline_s, grace_s) for a in attempts)
            ]
            if not overdue:
                continue
            last = attempts[-1]
            reasons = {i: last.reason(i, self.deadline_s) for i in overdue}
            if len(attempts) > self.rollout_reruns:
                failed[key] = reasons
                continue
            rerun = last.job.model_copy(
                update={
                    "attempt": len(attempts),
                    "rollout_indexes": overdue,
                    "enqueued_at": time.time(),
                }
            )
            log.warning(
                "group %s: rerunning rollouts %s alone as %s (%s)",
                rerun.job_id,
                overdue,
                rerun.rq_job_id,
                "; ".join(sorted({r.message for r in reasons.values()})),
            )
            self.ensure_enqueued(rerun)
            attempts.append(Attempt(rerun))
            self.reruns += len(overdue)
        return failed

    def waiting_for(self, groups: dict[GroupKey, GroupResults]) -> list[str]:
        """What each incomplete group waits for, one line per group."""
        now = time.time()
        lines = []
        for key, attempts in sorted(self.attempts.items()):
            missing = groups[key].missing() if key in groups else []
            if not missing:
                continue
            live = [a for a in attempts if a.ended_at is None] or attempts[-1:]
            states = ", ".join(_describe(a, now, self.deadline_s) for a in live)
            lines.append(f"s{key[0]}g{key[1]} rollouts {missing}: {states}")
        return lines

    def _refresh(self, attempt: Attempt, now: float) -> None:
        job = fetch_job(attempt.id, self.queue.connection)
        if job is None:
            attempt.state, attempt.ended_at = "vanished", now
            attempt.error = ErrorInfo(type="JobLost", message=f"job {attempt.id} vanished")
            return
        status = job.get_status(refresh=False)
        if status == JobStatus.QUEUED:
            self._check_dequeued(attempt, job, now)
        elif status == JobStatus.STARTED:
            attempt.dequeued_since = None
            attempt.started_at = job.started_at.timestamp() if job.started_at else now
            attempt.state = f"running on {job.worker_name}"
            lease = self.queue.connection.exists(keys.job_lease(job.id))
            if now - attempt.started_at >= self.lease_ttl_s and not lease:
                log.warning("job %s lost its worker %s; requeueing", job.id, job.worker_name)
                requeue_started_job(self.queue, job)
                self.requeued += 1
                attempt.started_at, attempt.state = None, "requeued: its worker was lost"
        elif status == JobStatus.FINISHED:
            attempt.state, attempt.ended_at = "finished", now
        elif status in _DEAD:
            attempt.state, attempt.ended_at = str(status.value), now
            attempt.error = _failure(job)
        else:
            attempt.state = str(status.value)

    def _check_dequeued(self, attempt: Attempt, job: Job, now: float) -> None:
        if is_waiting_in_queue(self.queue, job.id):
            attempt.state, attempt.dequeued_since = "queued", None
            return
        attempt.state = "taken off the queue, not started"
        if attempt.dequeued_since is None:
            attempt.dequeued_since = now
        elif now - attempt.dequeued_since >= self.lease_ttl_s:
            requeue_dequeued_job(self.queue, job)
            self.requeued += 1
            attempt.dequeued_since, attempt.state = None, "requeued: dequeued, never started"


def _describe(attempt: Attempt, now: float, deadline_s: float) -> str:
    text = f"{attempt.id} {attempt.state}"
    if attempt.started_at is not None and attempt.ended_at is None:
        text += f" for {now - attempt.started_at:.0f}s of {deadline_s:.0f}s"
    return text


def _failure(job: Job) -> ErrorInfo:
    try:
        latest = job.latest_result()
        message = (latest.exc_string if latest else None) or "job failed without a traceback"
    except Exception as exc:  # a result we cannot read is still a failure
        message = f"job failed; its result is unreadable ({exc})"
    return ErrorInfo(type="JobFailed", message=message.strip().splitlines()[-1], traceback=message)
