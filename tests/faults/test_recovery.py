"""The pieces of recovery on their own, against a real Redis: lease ownership, no pickle crossing
Redis, results of a later step, an ok copy beating a failed one, and the resume guard."""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis

from common import keys
from common.config import ExperimentConfig
from common.errors import ConfigError
from common.queue import connect, fetch_job, rollout_queue
from common.wire import RolloutJob, encode
from rollout_workers.job import Lease
from tests.conftest import ROOT
from tests.jobs import rollout_job
from tests.test_groups import result
from trainer.collector import ResultCollector
from trainer.dispatch import Dispatcher
from trainer.gather import Gatherer
from trainer.services import LocalServices
from trainer.state import PipelineState, check_resume
from trainer.status import render_status

pytestmark = pytest.mark.integration


def test_a_lease_belongs_to_its_holder(redis_url: str) -> None:
    """A late copy of a requeued job (its worker froze) neither renews nor deletes the lease
    of the live run."""
    redis = Redis.from_url(redis_url)
    frozen = Lease(redis, "job-1", ttl_s=30)
    redis.delete(keys.job_lease("job-1"))  # expired while it was frozen; the job was requeued
    live = Lease(redis, "job-1", ttl_s=30)
    live.start()
    frozen.start()
    frozen.stop()  # the frozen copy finishes
    assert redis.get(keys.job_lease("job-1")).decode() == live.token
    live.stop()
    assert not redis.exists(keys.job_lease("job-1"))


class _Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {_Exploit.marker}",))

    marker = ""


def test_a_pickle_planted_in_redis_is_never_unpickled(redis_url: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    payload = pickle.dumps(_Exploit())
    redis = Redis.from_url(redis_url)
    job_id = "run-x-s000000-g0000"
    redis.hset(
        f"rq:job:{job_id}",
        mapping={"data": payload, "meta": payload, "status": "queued", "origin": "rollouts",
                 "created_at": "2026-01-01T00:00:00.000000Z", "description": "planted"},
    )  # fmt: skip
    redis.hset(f"rq:results:{job_id}", mapping={"return_value": payload})
    redis.rpush("rq:queue:rollouts", job_id)
    redis.sadd("rq:queues", "rq:queue:rollouts")

    fetch_job(job_id, redis)  # the trainer's watch tick
    render_status(redis, "rollouts")  # python -m trainer.status
    worker = subprocess.run(
        [sys.executable, "-m", "rollout_workers", "--redis-url", redis_url, "--burst"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert not marker.exists(), "a pickle from Redis was loaded"
    assert worker.returncode == 0, worker.stderr[-2000:]


def _job(step: int, group: int) -> RolloutJob:
    return rollout_job(
        run_id="r", step=step, group=group, rollouts_per_group=3, instance_id=f"task{group}",
        problem_statement="x", lease_ttl_s=2,
    )  # fmt: skip


def test_results_of_a_group_not_started_yet_are_kept_for_it(redis_url: str) -> None:
    """Results of groups this life of the trainer has not started yet (an earlier life left
    them) are handed to each group when it starts, not left pending forever; results of a
    settled group are acknowledged away."""
    redis = connect(redis_url)
    collector = ResultCollector(redis, "r")
    for step in (1, 0, 2):
        for group in range(2):
            for index in range(3):
                posted = result(group, index).model_copy(update={"step": step})
                redis.xadd(keys.results_stream("r"), {"data": encode(posted)})
    dispatcher = Dispatcher(rollout_queue("rollouts", redis), 60, 0, 2)
    gatherer = Gatherer(
        collector, dispatcher, LocalServices(redis_url), 1.0,
        is_settled=lambda key: key[0] == 2, publish_status=lambda *a: None,
    )  # fmt: skip

    async def read_all() -> None:
        gatherer.start(_job(0, 0))
        gatherer.start(_job(0, 1))
        while len(gatherer.complete()) < 2:
            gatherer.take(await gatherer.read(), 0, "gathering")

    asyncio.run(asyncio.wait_for(read_all(), 20))
    assert set(gatherer.later) == {(1, 0), (1, 1)}, "step 1's results held for it"
    gatherer.start(_job(1, 0))
    gatherer.start(_job(1, 1))
    assert all(g.complete and len(g.results) == 3 for g in gatherer.groups.values())
    assert len(gatherer.groups) == 4 and not gatherer.later
    assert gatherer.stale_results == 6, "the settled step 2's results acknowledged away"
    pending = redis.xpending(keys.results_stream("r"), keys.TRAINER_GROUP)["pending"]
    assert pending == 12


def test_resume_refuses_a_changed_run_shape(tmp_path: Path) -> None:
    config = ExperimentConfig(rollouts_per_group=4, max_concurrent=8)
    state = PipelineState.fresh("run", 0, config)
    previous = tmp_path / "pipeline_config.json"
    previous.write_text(config.model_dump_json())
    check_resume(state, config, previous)  # same config: fine
    check_resume(state, config.model_copy(update={"learning_rate": 1e-5}), previous)  # logged
    changed = ExperimentConfig(rollouts_per_group=8, max_concurrent=8, shuffle_seed=3)
    with pytest.raises(ConfigError, match="--rollouts-per-group 4 -> 8, --shuffle-seed 0 -> 3"):
        check_resume(state, changed, previous)


def test_a_results_stream_lost_with_its_group_is_recreated(redis_url: str) -> None:
    """Redis back without its data (no persistence): the collector recreates its consumer group
    and keeps reading instead of stopping the trainer."""
    redis = connect(redis_url)
    collector = ResultCollector(redis, "r")
    redis.flushall()
    assert collector.poll(block_ms=10).received == []
    redis.xadd(keys.results_stream("r"), {"data": encode(result(0, 0))})
    received = [r for _ in range(3) for r in collector.poll(block_ms=100).received]
    assert [r.result.rollout_index for r in received] == [0]
