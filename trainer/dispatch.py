"""Putting one step's scenario groups on the queue, and watching the jobs while they run.

Job ids are deterministic, so after a trainer restart `ensure_enqueued` finds the jobs an
earlier life enqueued (queued, running or finished) instead of running them twice. A running
job whose lease has expired (its worker was killed) goes back to the front of the queue.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from common import keys
from common.queue import enqueue_group, requeue_started_job
from common.wire import ErrorInfo, RolloutJob

log = logging.getLogger(__name__)

_ALIVE = {
    JobStatus.QUEUED,
    JobStatus.STARTED,
    JobStatus.DEFERRED,
    JobStatus.SCHEDULED,
    JobStatus.FINISHED,
}


@dataclass
class Dispatcher:
    queue: Queue
    job_timeout_s: int
    job_retries: int
    lease_ttl_s: int
    requeued: int = 0

    def ensure_enqueued(self, job: RolloutJob) -> bool:
        """Enqueue the group unless a live job with its id exists. True when newly enqueued."""
        existing = self._fetch(job.job_id)
        if existing is not None and existing.get_status(refresh=False) in _ALIVE:
            return False
        if existing is not None:
            existing.delete()
        enqueue_group(self.queue, job, self.job_timeout_s, self.job_retries)
        return True

    def watch(self, job_ids: list[str]) -> dict[str, ErrorInfo]:
        """One pass over running jobs: requeue those whose worker stopped renewing the lease,
        and return those that crashed with no retries left, with the error they died of."""
        failed = {}
        now = time.time()
        for job_id in job_ids:
            job = self._fetch(job_id)
            status = job.get_status(refresh=False) if job is not None else None
            if job is not None and status == JobStatus.STARTED:
                started = job.started_at.timestamp() if job.started_at else now
                lease = self.queue.connection.exists(keys.job_lease(job_id))
                if now - started >= self.lease_ttl_s and not lease:
                    log.warning("job %s lost its worker %s; requeueing", job_id, job.worker_name)
                    requeue_started_job(self.queue, job)
                    self.requeued += 1
            elif job is not None and status in (JobStatus.FAILED, JobStatus.STOPPED):
                latest = job.latest_result()
                message = (
                    latest.exc_string if latest else None
                ) or "job failed without a traceback"
                failed[job_id] = ErrorInfo(
                    type="JobFailed", message=message.strip().splitlines()[-1], traceback=message
                )
        return failed

    def _fetch(self, job_id: str) -> Job | None:
        try:
            return Job.fetch(job_id, connection=self.queue.connection)
        except NoSuchJobError:
            return None
