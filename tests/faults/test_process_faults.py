"""The pipeline under process and Redis faults, with real processes: Redis, RQ workers, the trainer;
the scripted LLM stands in for vLLM and the recording backend for the GPU. One test per fault; each
asserts the same invariants (`tests.faults.invariants`). Leases, deadlines and timeouts are short
here so the suite stays fast; tests act on events (a worker busy, a request held), never on sleeps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import psutil
import pytest
from redis import Redis
from rq import Worker

from common import keys
from common.queue import SERIALIZER, rollout_queue
from tests.conftest import Processes, train_calls, wait_for
from tests.fakes.recording_backend import CRASH_AFTER_TRAIN_ENV
from tests.fakes.scripted_llm import ScriptedLLM
from tests.faults.invariants import FaultRun, assert_invariants
from tests.faults.support import busy_worker, posted, results_stream, thinking
from trainer.services import start_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_worker_sigkill_mid_job(
    redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    with ScriptedLLM(delay_s=0.2, script=thinking) as llm:
        run = FaultRun(redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=90)
        for name in ("a", "b"):
            processes.worker(redis_url, name)
        trainer = processes.trainer(run.args())
        victim = busy_worker(redis_url)
        psutil.Process(victim.pid).kill()
        rows = assert_invariants(run, trainer, processes.logs())
    assert sum(r["pipeline/requeued_jobs"] for r in rows) >= 1


def test_worker_frozen_past_its_lease_then_resumed(
    redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    redis = Redis.from_url(redis_url)
    with ScriptedLLM(delay_s=0.2, script=thinking) as llm:
        run = FaultRun(redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=90)
        for name in ("a", "b"):
            processes.worker(redis_url, name)
        trainer = processes.trainer(run.args())
        victim = busy_worker(redis_url)
        job_id = victim.get_current_job_id()
        frozen = psutil.Process(victim.pid)
        frozen.suspend()
        try:
            # The trainer takes the job back once the frozen worker's lease has expired.
            queue = rollout_queue("rollouts", redis)
            wait_for(
                lambda: queue.fetch_job(job_id).worker_name not in (victim.name,), 30, "requeue"
            )
        finally:
            frozen.resume()
        rows = assert_invariants(run, trainer, processes.logs())
    assert sum(r["pipeline/requeued_jobs"] for r in rows) >= 1


def test_worker_dies_between_dequeue_and_start(
    redis_url: str, llm: ScriptedLLM, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    redis = Redis.from_url(redis_url)
    queue = rollout_queue("rollouts", redis)
    run = FaultRun(redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=60)
    trainer = processes.trainer(run.args())
    wait_for(lambda: queue.count == 2, 60, "the first step's jobs queued")
    # What a worker does on dequeue (RQ's BLMOVE), then it dies before starting the job.
    taken = redis.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")
    assert taken is not None
    processes.worker(redis_url, "a")
    rows = assert_invariants(run, trainer, processes.logs())
    assert rows[0]["pipeline/requeued_jobs"] >= 1


# S = --max-steps-off-policy: the synchronous loop, and the asynchronous one with every group of
# the run started at once (so a kill always finds groups of several steps in flight).
OFF_POLICY = pytest.mark.parametrize("off_policy", [0, 2], ids=["sync", "async-S2"])


@OFF_POLICY
def test_trainer_sigkill_mid_gather_resumes(
    redis_url: str, dataset: Path, tmp_path: Path, processes: Processes, off_policy: int
) -> None:
    redis = Redis.from_url(redis_url)
    with ScriptedLLM(delay_s=0.1) as llm:
        run = FaultRun(
            redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=120,
            overrides={"max_steps_off_policy": off_policy},
        )  # fmt: skip
        for name in ("a", "b"):
            processes.worker(redis_url, name)
        first = processes.trainer(run.args())
        stream = results_stream(run.art_path)
        wait_for(lambda: posted(redis, stream) >= 2, 60, "step 0 results")
        first.kill()
        first.wait(10)
        second = processes.trainer(run.args())
        assert_invariants(run, second, processes.logs())


@OFF_POLICY
def test_trainer_sigkill_mid_train_trains_once(
    redis_url: str,
    llm: ScriptedLLM,
    dataset: Path,
    tmp_path: Path,
    processes: Processes,
    off_policy: int,
) -> None:
    run = FaultRun(
        redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=120,
        overrides={"max_steps_off_policy": off_policy},
    )  # fmt: skip
    processes.worker(redis_url, "a")
    first = processes.trainer(run.args(), env={CRASH_AFTER_TRAIN_ENV: "1"})
    assert first.wait(90) == 137, processes.logs()
    assert len(train_calls(run.art_path)) == 1
    assert_invariants(run, processes.trainer(run.args()), processes.logs())


def test_redis_restart_mid_step(
    dataset: Path, tmp_path: Path, processes: Processes, llm: ScriptedLLM
) -> None:
    data = tmp_path / "redis"
    server, url = start_redis_server(data, appendonly=True)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        run = FaultRun(url, llm.url, dataset, tmp_path / "art", max_wall_s=120)
        for name in ("a", "b"):
            processes.worker(url, name)
        trainer = processes.trainer(run.args())
        stream = results_stream(run.art_path)
        redis = Redis.from_url(url)
        wait_for(lambda: posted(redis, stream) >= 2, 60, "step 0 under way")
        server.kill()  # a crash: what was not yet fsynced is lost
        server.wait(10)
        server, _ = start_redis_server(data, appendonly=True, port=port)
        assert_invariants(run, trainer, processes.logs())
        assert all(p.poll() is None for p in processes.started[:2]), "workers survived"
    finally:
        processes.stop_all()
        server.terminate()
        server.wait(10)


def test_redis_outage_past_the_bound_stops_the_trainer_clearly(
    dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    server, url = start_redis_server(tmp_path / "redis", appendonly=False)
    try:
        with ScriptedLLM(delay_s=0.2, script=thinking) as llm:
            run = FaultRun(
                url, llm.url, dataset, tmp_path / "art", max_wall_s=60,
                overrides={"redis_outage_s": 3},
            )  # fmt: skip
            processes.worker(url, "a")
            trainer = processes.trainer(run.args())
            busy_worker(url)
            server.kill()
            server.wait(10)
            assert trainer.wait(30) == 3, processes.logs()
        assert "Redis unreachable for more than --redis-outage-s 3s" in processes.logs()
        assert train_calls(run.art_path) == []
    finally:
        server.kill()
        server.wait(10)


def test_redis_outage_past_the_bound_stops_an_idle_worker_clearly(
    tmp_path: Path, processes: Processes
) -> None:
    server, url = start_redis_server(tmp_path / "redis", appendonly=False)
    try:
        worker = processes._spawn(
            [sys.executable, "-m", "rollout_workers", "--redis-url", url, "--redis-outage-s", "1"],
            "worker",
        )
        redis = Redis.from_url(url)
        wait_for(lambda: Worker.all(connection=redis, serializer=SERIALIZER), 30, "the worker")
        server.kill()
        server.wait(10)
        assert worker.wait(30) == 3, processes.logs()
        # RQ's heartbeat or its dequeue meets the outage first: either way, one clear line.
        assert "unreachable past --redis-outage-s" in processes.logs()
    finally:
        server.kill()
        server.wait(10)


def test_result_entry_lost_before_delivery_is_rerun(
    redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    redis = Redis.from_url(redis_url)
    with ScriptedLLM(delay_s=0.05) as llm:
        run = FaultRun(redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=90)
        processes.worker(redis_url, "a")
        trainer = processes.trainer(run.args())
        stream = results_stream(run.art_path)

        def steal_one() -> bool:
            # Another consumer of the trainer's group takes an entry, then it vanishes. Blocked
            # readers are served in the order they blocked, and the trainer re-blocks every
            # half second, so a reader that keeps blocking gets an entry before it.
            reply = redis.xreadgroup(
                keys.TRAINER_GROUP, "thief", {stream: ">"}, count=1, block=2000
            )
            for entry_id, _fields in reply[0][1] if reply else []:
                redis.xack(stream, keys.TRAINER_GROUP, entry_id)
                redis.xdel(stream, entry_id)
                return True
            return False

        wait_for(lambda: redis.exists(stream), 60, "the results stream")
        wait_for(steal_one, 60, "a result entry to lose", every_s=0)
        rows = assert_invariants(run, trainer, processes.logs())
    assert sum(r["pipeline/rerun_rollouts"] for r in rows) >= 1
