"""`RolloutWorker`: an RQ `SimpleWorker` that gives its job back when told to stop.

No fork per job: a job is a long group of rollouts, and the imports are already warm. Cyclic
garbage is collected after each job (`--manual-gc`, `common.garbage`). On SIGTERM
or SIGINT (what `docker stop` and Ctrl+C send) a busy worker requeues its job at the front of the
queue, kills its code runners, removes its rollout directories and exits at once, so another
worker picks the job up without waiting for any timeout. An idle worker just stops.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import tempfile
from types import FrameType
from typing import Any

import psutil
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.job import Job
from rq.queue import Queue
from rq.worker import SimpleWorker

from common.garbage import Collection
from common.queue import requeue_started_job, rollout_queue
from rollout_workers.workdir import rollout_dir_prefix

log = logging.getLogger(__name__)


class RolloutWorker(SimpleWorker):
    def __init__(self, *args: Any, collection: Collection | None = None, **kwargs: Any) -> None:
        """`collection`: what runs after each job (`--manual-gc`); none: automatic collection."""
        super().__init__(*args, **kwargs)
        self.collection = collection or Collection(manual=False)

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        finally:
            self.collection.collect()  # the job's rollouts are let go: a small heap

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        """RQ's heartbeat; its connection already rode out `--redis-outage-s` of retries, so a
        connection error here means a longer outage: say so and stop (RQ would retry forever).
        A job this worker held is requeued by the trainer once its lease expires."""
        try:
            super().heartbeat(timeout, pipeline)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.error(
                "worker %s: Redis unreachable past --redis-outage-s (%s); stopping", self.name, exc
            )
            _kill_children()
            logging.shutdown()
            os._exit(3)

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, self._stop_and_requeue)
        signal.signal(signal.SIGTERM, self._stop_and_requeue)

    def _stop_and_requeue(self, signum: int, frame: FrameType | None) -> None:
        job = self.get_current_job()
        if job is None:
            self.request_stop(signum, frame)  # idle: RQ's own clean stop
            return
        log.warning(
            "worker %s: %s while running %s; requeueing it",
            self.name,
            signal.Signals(signum).name,
            job.id,
        )
        try:
            requeue_started_job(rollout_queue(job.origin, self.connection), job)
        finally:
            _kill_children()
            for path in glob.glob(os.path.join(tempfile.gettempdir(), rollout_dir_prefix() + "*")):
                shutil.rmtree(path, ignore_errors=True)
            try:
                self.register_death()
            finally:
                # Leave now: the job is someone else's; letting RQ finish it would record a result.
                os._exit(0)


def _kill_children() -> None:
    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.NoSuchProcess:
            continue
