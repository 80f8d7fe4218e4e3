"""The RQ job function: run one attempt at a scenario group's rollouts concurrently, post each
as it ends.

While the job runs, a thread renews its lease in Redis under a token of its own; if the worker
dies the lease expires and the trainer requeues the job, and a late copy of a requeued job never
deletes the lease of the live one. Rollouts already posted by an earlier run of the same job are
skipped. An infrastructure failure that outlives its retries is posted as a failed rollout, never
as reward 0. A rollout that never called `finish()`, or left no diff, is a model outcome: reward 0
without a grading container, as in the original (`--grade-unfinished` grades it anyway).

A group the trainer cancelled (`common.queue.cancel_group`) is not run when its job starts late;
while it runs, its rollouts stop at their next turn, and nothing is graded or posted for them
(the trainer has settled the group). The job still ends as finished, saying so in one line.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable

from redis import Redis
from rq import get_current_job

from common import keys
from common.config import import_callable
from common.errors import INFRASTRUCTURE_ERRORS, SandboxError
from common.grading import GradeRequest
from common.queue import is_group_cancelled, read_job_argument
from common.rewards import RewardInput, exact_match
from common.wire import ErrorInfo, RolloutJob, RolloutResult, WireTrajectory, encode
from grader.client import GraderClient
from rollout_workers import policy
from rollout_workers.cancel import GroupCancellation, RolloutCancelled
from rollout_workers.outcome import RolloutOutcome
from rollout_workers.policy import PolicyClient
from rollout_workers.replies import ReplyPoster
from rollout_workers.rollout import run_rollout

log = logging.getLogger(__name__)


def warm_up() -> None:
    """Pay one-time costs (TLS certificates, default prompt and reward modules) at start-up,
    not inside the first job's rollouts."""
    policy.warm_up()
    import_callable("common.prompts:r2e_system_prompt")
    import_callable("common.rewards:binary_test_reward")


def run_rollout_group(argument: str) -> dict[str, int]:
    """Entry point RQ calls. Returns counts for rq-dashboard; results go to the stream."""
    job = read_job_argument(argument)
    connection = get_current_job().connection
    if is_group_cancelled(connection, job.job_id):
        log.info("job %s: its group was cancelled before it started; nothing run", job.rq_job_id)
        return {"posted": 0, "failed": 0, "cancelled": len(job.indexes)}
    lease = Lease(connection, job.rq_job_id, job.lease_ttl_s)
    lease.start()
    try:
        return asyncio.run(_run_group(connection, job))
    finally:
        lease.stop()


async def _run_group(connection: Redis, job: RolloutJob) -> dict[str, int]:
    posted = {int(i) for i in connection.smembers(keys.posted_rollouts(job.rq_job_id))}
    todo = [i for i in job.indexes if i not in posted]
    if posted:
        log.info(
            "job %s: %d rollouts already posted, running %d", job.rq_job_id, len(posted), len(todo)
        )
    system_prompt = import_callable(job.system_prompt_fn)()
    reward_fn = import_callable(job.reward_fn)
    client = PolicyClient(job.policy, job.limits)
    grader = (
        GraderClient(job.grader_url, backoff_s=job.limits.retry_backoff_s) if job.grading else None
    )
    cancellation = GroupCancellation(connection, job.job_id)
    try:
        ended = await asyncio.gather(
            *(
                _rollout_and_post(
                    connection, job, i, client, grader, system_prompt, reward_fn, cancellation
                )
                for i in todo
            )
        )
    finally:
        await client.aclose()
        if grader is not None:
            await grader.aclose()
    results = [r for r in ended if r is not None]
    cancelled = len(ended) - len(results)
    if cancelled:
        log.info(
            "job %s: its group was cancelled; %d rollouts stopped unposted, %d posted before",
            job.rq_job_id, cancelled, len(results),
        )  # fmt: skip
    return {
        "posted": len(results),
        "failed": sum(r.status == "failed" for r in results),
        "cancelled": cancelled,
    }


async def _rollout_and_post(
    connection: Redis,
    job: RolloutJob,
    index: int,
    client: PolicyClient,
    grader: GraderClient | None,
    system_prompt: str,
    reward_fn: Callable[[RewardInput], float],
    cancellation: GroupCancellation | None = None,
) -> RolloutResult | None:
    """The rollout's result, posted; None when its group was cancelled (nothing posted)."""
    started = time.time()
    trajectory, error, attempts, outcome = None, None, 0, None
    rollout_id = keys.rollout_id(job.job_id, index)
    record = sampled(rollout_id, job.log_sample_rate)
    delay = job.limits.retry_backoff_s
    while True:
        attempts += 1
        try:
            # Filled in as it goes: a rollout that fails still has its iterations to log.
            outcome = RolloutOutcome(reply_item=ReplyPoster(connection, job, index).item)
            await run_rollout(
                job, client, system_prompt, record=record, outcome=outcome,
                cancellation=cancellation,
            )  # fmt: skip
            if cancellation is not None:
                await cancellation.check()  # settled while it ran: no grading
            trajectory = await score(
                job, outcome, grader, reward_fn, grade_unfinished=job.grade_unfinished
            )
            break
        except RolloutCancelled:
            return None
        except INFRASTRUCTURE_ERRORS as exc:
            # A sandbox that failed gets a fresh rollout; endpoint and grader errors were already
            # retried request by request, so they end the rollout as failed.
            if attempts > job.limits.rollout_retries or not isinstance(exc, SandboxError):
                error = ErrorInfo(
                    type=type(exc).__name__, message=str(exc), traceback=traceback.format_exc()
                )
                break
            log.warning("rollout %d of %s: %s; retrying in %.1fs", index, job.job_id, exc, delay)
            await asyncio.sleep(delay)
            delay *= 2
    result = RolloutResult(
        run_id=job.run_id,
        job_id=job.job_id,
        rollout_id=rollout_id,
        step=job.step,
        group_index=job.group_index,
        rollout_index=index,
        instance_id=job.scenario.instance_id,
        policy_step=job.policy.policy_step,
        status="ok" if error is None else "failed",
        trajectory=trajectory,
        error=error,
        attempts=attempts,
        worker=f"{socket.gethostname()}:{os.getpid()}",
        enqueued_at=job.enqueued_at,
        started_at=started,
        finished_at=time.time(),
        rlm_log=outcome.iterations if record and outcome is not None else None,
    )
    if cancellation is not None and await cancellation.is_set():
        return None  # settled while it was graded: the trainer takes nothing more
    post_result(connection, job, result)
    return result


def sampled(rollout_id: str, rate: float) -> bool:
    """Whether this rollout's visualizer log is kept: a stable draw from its id."""
    return int(hashlib.sha1(rollout_id.encode()).hexdigest()[:8], 16) / 2**32 < rate


async def score(
    job: RolloutJob,
    outcome: RolloutOutcome,
    grader: GraderClient | None,
    reward_fn: Callable[[RewardInput], float],
    *,
    grade_unfinished: bool = False,
) -> WireTrajectory:
    """Grade the outcome's diff (when the job has a grading spec) and turn it into a reward.

    An unfinished rollout (no `finish()`) or an empty diff gets reward 0 without a grading,
    unless `grade_unfinished`; it is counted (`grading_skipped`) and is no success."""
    report = None
    grading_s = 0.0
    gradable = outcome.finished and bool(outcome.diff.strip())
    skipped = grader is not None and job.grading is not None and not (gradable or grade_unfinished)
    if grader is not None and job.grading is not None and not skipped:
        began = time.monotonic()
        report = await grader.grade(
            GradeRequest(
                instance_id=job.scenario.instance_id,
                docker_image=job.grading.docker_image,
                diff=outcome.diff,
                timeout_s=job.grading_timeout_s,
            )
        )
        grading_s = time.monotonic() - began
    tampered = report is not None and report.tampered
    # Nothing finished, or nothing changed: nothing to grade and nothing to pay (the original).
    reward = 0.0
    if not skipped:
        reward = float(
            reward_fn(
                RewardInput(
                    finished=outcome.finished,
                    truncated=outcome.truncated,
                    steps=outcome.steps,
                    test_results=report.statuses if report else None,
                    expected=job.grading.expected if job.grading else {},
                    fail_to_pass=tuple(job.grading.fail_to_pass) if job.grading else (),
                    pass_to_pass=tuple(job.grading.pass_to_pass) if job.grading else (),
                    tampered=tampered,
                )
            )
        )
    if tampered:
        reward = 0.0  # whatever a custom reward function says: tampering is never paid
    metrics: dict[str, float | int | bool] = {
        "steps": outcome.steps,
        "finished": outcome.finished,
        "truncated": outcome.truncated,
        "sub_queries": outcome.sub_queries,
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "repl_time_s": round(outcome.repl_time_s, 4),
        "llm_time_s": round(outcome.llm_time_s, 4),
        "repl_restarts": outcome.repl_restarts,
        "request_retries": outcome.request_retries,
        "diff_lines": outcome.diff.count("\n"),
        "context_trims": outcome.context_trims,
        "time_limited": 1.0 if outcome.time_limited else 0.0,
    }
    if skipped:
        metrics |= {"grading_skipped": True, "success": False}
    if report is not None:
        metrics |= {
            "grading_s": round(grading_s, 4),
            "tests_s": round(report.timings.tests_s, 4),
            "tests_timed_out": report.timed_out,
            "success": not tampered and exact_match(report.statuses, job.grading.expected),
            "tampered": tampered,
        }
    return WireTrajectory(
        messages_and_choices=outcome.items,
        additional_histories=outcome.histories,
        reward=reward,
        initial_policy_version=job.policy.policy_step,
        final_policy_version=job.policy.policy_step,
        metrics=metrics,
        metadata={
            "instance_id": job.scenario.instance_id,
            "policy_step": job.policy.policy_step,
            "model": job.policy.inference_name,
            # What the grader found the diff tampering with ("<reason>: <path>; ...").
            **({"tamper": "; ".join(report.tamper)[:2000]} if tampered and report else {}),
        },
    )


def post_result(connection: Redis, job: RolloutJob, result: RolloutResult) -> None:
    """Append to the results stream and mark the rollout posted, in one transaction."""
    with connection.pipeline(transaction=True) as pipe:
        pipe.xadd(job.results_stream, {"data": encode(result)})
        pipe.sadd(keys.posted_rollouts(job.rq_job_id), result.rollout_index)
        pipe.expire(keys.posted_rollouts(job.rq_job_id), 7 * 24 * 3600)
        pipe.execute()


# Renew or delete the lease only while it still holds this execution's token.
_RENEW = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('expire', KEYS[1], ARGV[2]) end return 0"""
_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1]) end return 0"""


class Lease(threading.Thread):
    """Holds `keys.job_lease(job_id)` with a per-execution token, renewed every ttl/3 seconds
    until stopped. Once it has expired (this worker froze and the job was requeued) it is never
    taken back, and release deletes it only while it is still ours."""

    def __init__(self, connection: Redis, job_id: str, ttl_s: int) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.connection, self.key, self.ttl_s = connection, keys.job_lease(job_id), ttl_s
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._stopped = threading.Event()
        self._renew = connection.register_script(_RENEW)
        self._release = connection.register_script(_RELEASE)
        self.connection.set(self.key, self.token, ex=ttl_s)

    def run(self) -> None:
        while not self._stopped.wait(self.ttl_s / 3):
            try:
                if not self._renew(keys=[self.key], args=[self.token, self.ttl_s]):
                    log.warning("lease %s is no longer ours; the job was requeued", self.key)
                    return
            except Exception:
                log.exception("lease renewal failed")

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)
        self._release(keys=[self.key], args=[self.token])
