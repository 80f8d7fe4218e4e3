"""RQ and Redis helpers shared by the trainer (which enqueues and requeues) and the workers
(which requeue their own job on SIGTERM).

Nothing crosses Redis as a pickle: every Queue, Worker and Job uses RQ's `JSONSerializer`, and a
job's one argument is its `RolloutJob` as a base64 msgpack envelope from `common.wire`. Every
connection rides out a Redis restart of up to `outage_s` seconds (redis-py's own `Retry`).
"""

from __future__ import annotations

import base64
import contextlib
import logging

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
from redis.retry import Retry
from rq import Queue
from rq import Retry as JobRetry
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from common import keys
from common.wire import RolloutJob, decode, encode

log = logging.getLogger(__name__)

JOB_FUNCTION = "rollout_workers.job.run_rollout_group"
SERIALIZER = JSONSerializer  # never pickle: anything that can write to Redis would run code
REDIS_OUTAGE_S = 60.0  # a Redis restart this long is ridden out; a longer one ends the process
_BACKOFF_CAP_S = 1.0


def connect(redis_url: str, outage_s: float = REDIS_OUTAGE_S) -> Redis:
    """A client whose commands retry with exponential backoff for about `outage_s` seconds
    while Redis is unreachable or loading, then raise ConnectionError."""
    retries = int(outage_s / _BACKOFF_CAP_S) + 5  # 0.05, 0.1 ... 0.8 s, then 1 s each
    return Redis.from_url(
        redis_url,
        health_check_interval=30,
        socket_connect_timeout=5,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=_BACKOFF_CAP_S, base=0.05), retries),
        retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError],
    )


def rollout_queue(name: str, connection: Redis) -> Queue:
    return Queue(name, connection=connection, serializer=SERIALIZER)


def eval_queue_name(queue_name: str) -> str:
    """The queue of evaluation groups beside a rollout queue; workers serve it first."""
    return f"{queue_name}-eval"


def job_argument(job: RolloutJob) -> str:
    """The job's one RQ argument: JSON carries text, so the msgpack envelope goes as base64."""
    return base64.b64encode(encode(job)).decode("ascii")


def read_job_argument(argument: str) -> RolloutJob:
    return decode(base64.b64decode(argument, validate=True), RolloutJob)


def enqueue_group(queue: Queue, job: RolloutJob, timeout_s: int, retries: int) -> Job:
    """Enqueue one attempt at a scenario group under its deterministic id."""
    what = "all" if job.rollout_indexes is None else f"rollouts {job.rollout_indexes}"
    return queue.enqueue(
        JOB_FUNCTION,
        job_argument(job),
        job_id=job.rq_job_id,
        job_timeout=timeout_s,
        result_ttl=24 * 3600,
        failure_ttl=7 * 24 * 3600,
        retry=JobRetry(max=retries) if retries else None,
        description=f"{job.scenario.instance_id} {what} of {job.rollouts_per_group} "
        f"(step {job.step}, attempt {job.attempt})",
    )


def fetch_job(job_id: str, connection: Redis) -> Job | None:
    """The job, or None when it does not exist or cannot be read as JSON (a planted pickle, say:
    logged, never deserialised; enqueueing the attempt again overwrites it)."""
    try:
        return Job.fetch(job_id, connection=connection, serializer=SERIALIZER)
    except NoSuchJobError:
        return None
    except (DeserializationError, ValueError) as exc:
        log.error("job %s in Redis is unreadable (%s); treating it as gone", job_id, exc)
        return None


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


def requeue_dequeued_job(queue: Queue, job: Job) -> None:
    """Put back a job a worker took off the queue but never started (it died in between):
    out of RQ's intermediate list, to the front of the queue."""
    with queue.connection.pipeline() as pipe:
        pipe.multi()
        pipe.lrem(queue.intermediate_queue_key, 0, job.id)
        queue.enqueue_job(job, pipeline=pipe, at_front=True)
        pipe.execute()
    log.warning("job %s was dequeued but never started; requeued", job.id)


def is_waiting_in_queue(queue: Queue, job_id: str) -> bool:
    """Whether the job id is on the queue's list itself (not taken by a worker yet)."""
    return queue.connection.lpos(queue.key, job_id) is not None


def cancel_group(queue: Queue, job: RolloutJob, ttl_s: int) -> None:
    """Cancel a group the trainer has settled: workers running any attempt of it stop at their
    next check (`is_group_cancelled`) and post nothing; attempts still waiting in the queue are
    cancelled in RQ, so no worker takes them. The key is set first: an attempt a worker takes
    between the two steps still sees it when it starts."""
    connection = queue.connection
    connection.set(keys.group_cancelled(job.job_id), "1", ex=ttl_s)
    attempt = 0
    while (waiting := fetch_job(keys.attempt_job_id(job.job_id, attempt), connection)) is not None:
        # The queue it waits in: `queue`, unless the attempt went to another (an eval group's).
        origin = rollout_queue(waiting.origin, connection)
        if is_waiting_in_queue(origin, waiting.id):
            with contextlib.suppress(InvalidJobOperation):  # cancelled meanwhile by another call
                waiting.cancel()
        attempt += 1


def is_group_cancelled(connection: Redis, job_id: str) -> bool:
    """Whether the group (its job id, not an attempt's) was cancelled by `cancel_group`."""
    return bool(connection.exists(keys.group_cancelled(job_id)))
