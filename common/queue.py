"""RQ helpers shared by the trainer (which enqueues and requeues) and the workers (which requeue
their own job on SIGTERM). Job arguments are msgpack envelopes from `common.wire`."""

from __future__ import annotations

import logging

from redis import Redis
from rq import Queue, Retry
from rq.job import Job
from rq.registry import StartedJobRegistry

from common import keys
from common.wire import RolloutJob, encode

log = logging.getLogger(__name__)

JOB_FUNCTION = "rollout_workers.job.run_rollout_group"


def connect(redis_url: str) -> Redis:
    return Redis.from_url(redis_url, health_check_interval=30)


def enqueue_group(queue: Queue, job: RolloutJob, timeout_s: int, retries: int) -> Job:
    """Enqueue one scenario group under its deterministic id."""
    return queue.enqueue(
        JOB_FUNCTION,
        encode(job),
        job_id=job.job_id,
        job_timeout=timeout_s,
        result_ttl=24 * 3600,
        failure_ttl=7 * 24 * 3600,
        retry=Retry(max=retries) if retries else None,
        description=f"{job.scenario.instance_id} x{job.rollouts_per_group} (step {job.step})",
    )


def requeue_started_job(queue: Queue, job: Job) -> None:
    """Put a job that a worker started but will not finish back at the front of its queue.

    One transaction: its entries leave the started registry and it is queued again."""
    registry = StartedJobRegistry(queue=queue)
    with queue.connection.pipeline() as pipe:
        pipe.multi()  # explicit, as RQ's enqueue_job expects of a caller's pipeline
        for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
            if job_id == job.id:
                pipe.zrem(registry.key, f"{job_id}:{execution_id}")
        pipe.delete(keys.job_lease(job.id))
        job.started_at = None
        job.worker_name = None
        queue.enqueue_job(job, pipeline=pipe, at_front=True)
        pipe.execute()
    log.warning("job %s requeued", job.id)
