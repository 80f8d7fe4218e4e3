"""What the fault tests share besides the invariants: a script that never finishes, finding a
busy worker, the run's results stream and how many entries it ever took."""

from __future__ import annotations

from pathlib import Path

from redis import Redis
from rq import Worker

from common import keys
from common.queue import SERIALIZER
from tests.conftest import pipeline_state, wait_for

THINKING = "Still thinking, no code yet."  # never finishes: a rollout runs all its turns


def thinking(messages: list, rng: object) -> str:
    return THINKING


def busy_worker(redis_url: str) -> Worker:
    def find() -> Worker | None:
        for worker in Worker.all(connection=Redis.from_url(redis_url), serializer=SERIALIZER):
            if worker.get_current_job_id():
                return worker
        return None

    return wait_for(find, 60, "a worker running a job")


def results_stream(art_path: Path) -> str:
    state = wait_for(lambda: pipeline_state(art_path), 60, "the trainer's first state")
    return keys.results_stream(state["run_key"])


def posted(redis: Redis, stream: str) -> int:
    return int(redis.xinfo_stream(stream)["entries-added"]) if redis.exists(stream) else 0
