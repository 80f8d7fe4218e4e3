"""Evaluation groups go first: a worker serves `eval_queue_name(--queue-name)` before the rollout
queue (real worker process, real Redis)."""

from __future__ import annotations

import pytest
from redis import Redis

from common.queue import enqueue_group, eval_queue_name, fetch_job, rollout_queue
from common.wire import RolloutResult, decode
from tests.fakes.scripted_llm import ScriptedLLM, finish_at_once
from tests.test_cancel import _burst_worker, group_job

pytestmark = pytest.mark.integration


def test_eval_queue_name() -> None:
    assert eval_queue_name("rollouts") == "rollouts-eval"


def test_a_worker_runs_waiting_eval_jobs_before_rollout_jobs(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    with ScriptedLLM(script=finish_at_once) as llm:
        job = group_job(llm.url).model_copy(update={"rollouts_per_group": 1})
        training = job.model_copy(update={"group_index": 0, "job_id": "t-s000000-g0000"})
        evaluation = job.model_copy(update={"group_index": 1, "job_id": "t-s000000-g0001"})
        # The training job waits longer: only the queues' order can put the eval job first.
        enqueue_group(rollout_queue("rollouts", redis), training, timeout_s=300, retries=0)
        enqueue_group(
            rollout_queue(eval_queue_name("rollouts"), redis), evaluation, timeout_s=300, retries=0
        )
        worker = _burst_worker(redis_url)
        assert worker.returncode == 0, worker.stderr[-3000:]
    posted = [
        decode(fields[b"data"], RolloutResult) for _, fields in redis.xrange(job.results_stream)
    ]
    assert [r.group_index for r in posted] == [1, 0]
    ran = [fetch_job(j.rq_job_id, redis) for j in (evaluation, training)]
    assert ran[0].ended_at <= ran[1].started_at
