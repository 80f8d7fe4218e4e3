"""The pipeline under faults, with real processes: Redis, RQ workers, the trainer; the scripted LLM
stands in for vLLM and the recording backend for the GPU. One test per fault; each asserts the
same invariants (`tests.faults.invariants`). Leases, deadlines and timeouts are short here so the
suite stays fast; tests act on events (a worker busy, a request held), never on sleeps.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import psutil
import pytest
from redis import Redis
from rq import Worker

from common import keys
from common.queue import SERIALIZER, rollout_queue
from common.wire import RolloutResult, decode, encode
from tests.conftest import Processes, pipeline_state, train_calls, wait_for
from tests.fakes.recording_backend import CRASH_AFTER_TRAIN_ENV
from tests.fakes.scripted_llm import ScriptedLLM
from tests.faults.invariants import FaultRun, assert_invariants
from trainer.services import start_redis_server
from trainer.status import render_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

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


def test_trainer_sigkill_mid_gather_resumes(
    redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    redis = Redis.from_url(redis_url)
    with ScriptedLLM(delay_s=0.1) as llm:
        run = FaultRun(redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=120)
        for name in ("a", "b"):
            processes.worker(redis_url, name)
        first = processes.trainer(run.args())
        stream = results_stream(run.art_path)
        wait_for(lambda: posted(redis, stream) >= 2, 60, "step 0 results")
        first.kill()
        first.wait(10)
        second = processes.trainer(run.args())
        assert_invariants(run, second, processes.logs())


def test_trainer_sigkill_mid_train_trains_once(
    redis_url: str, llm: ScriptedLLM, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    run = FaultRun(redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=120)
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
        assert "Redis unreachable past --redis-outage-s" in processes.logs()
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


def test_malformed_results_are_quarantined_and_rerun(
    redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    redis = Redis.from_url(redis_url)
    with ScriptedLLM(delay_s=0.2) as llm:
        run = FaultRun(redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=90)
        processes.worker(redis_url, "a")
        trainer = processes.trainer(run.args())
        stream = results_stream(run.art_path)
        wait_for(lambda: posted(redis, stream) >= 1, 60, "a first result")
        [(_, fields)] = redis.xrange(stream, count=1) or [(None, None)]
        real = decode(fields[b"data"], RolloutResult)
        # A result for a rollout not yet in, whose Choice ART cannot rebuild.
        choice = dict(real.trajectory.messages_and_choices[2].data, finish_reason="abort")
        items = list(real.trajectory.messages_and_choices)
        items[2] = items[2].model_copy(update={"data": choice})
        poison = real.model_copy(
            update={
                "rollout_index": 2,
                "group_index": 1,
                "rollout_id": real.rollout_id[:-1] + "2",
                "trajectory": real.trajectory.model_copy(update={"messages_and_choices": items}),
            }
        )
        redis.xadd(stream, {"data": encode(poison)})
        redis.xadd(stream, {"data": b"\xc1 not msgpack"})
        redis.xadd(stream, {"data": msgpack.packb({"v": 99, "type": "x", "body": {}})})
        rows = assert_invariants(run, trainer, processes.logs())
    letters = redis.xrange(keys.dead_letters(pipeline_state(run.art_path)["run_key"]))
    errors = " ".join(fields[b"error"].decode() for _, fields in letters)
    assert len(letters) == 3 and "cannot be rebuilt" in errors, errors
    assert sum(r["pipeline/dead_letters"] for r in rows) == 3


@pytest.mark.parametrize(
    "faults",
    [
        {"abort": 3, "no_logprobs": 2, "bad_json": 2},
        {"http_500": 4, "hang": 2},
    ],
    ids=["abort-no-logprobs-bad-json", "5xx-and-hangs"],
)
def test_policy_faults_are_retried_never_posted(
    faults: dict[str, int],
    redis_url: str,
    dataset: Path,
    tmp_path: Path,
    processes: Processes,
) -> None:
    with ScriptedLLM() as llm:
        for kind, times in faults.items():
            llm.inject(kind, times)
        run = FaultRun(
            redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=90,
            overrides={"request_timeout_s": 1, "rollout_retries": 3},
        )  # fmt: skip
        processes.worker(redis_url, "a")
        rows = assert_invariants(run, processes.trainer(run.args()), processes.logs())
        assert dict(llm.faults_served) == faults
    assert sum(r["pipeline/groups_dropped"] for r in rows) == 0
    assert sum(r["pipeline/dead_letters"] for r in rows) == 0, "a bad response went on the wire"


def test_policy_that_keeps_aborting_drops_groups_never_scores_them(
    redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    with ScriptedLLM() as llm:
        llm.inject("abort", 10_000)
        run = FaultRun(
            redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=60,
            overrides={"rollout_retries": 1},
        )  # fmt: skip
        processes.worker(redis_url, "a")
        rows = assert_invariants(run, processes.trainer(run.args()), processes.logs())
    assert train_calls(run.art_path) == []
    assert all(r["pipeline/groups_dropped/failed_rollout:EndpointError"] == 2 for r in rows)


@pytest.mark.parametrize("reruns", [2, 0], ids=["rerun", "no-reruns-left"])
def test_rollout_past_its_deadline_is_rerun_alone(
    reruns: int, redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    with ScriptedLLM() as llm:
        llm.inject("hang")  # one request never answers within the request timeout
        run = FaultRun(
            redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=60,
            overrides={"request_timeout_s": 300, "rollout_deadline_s": 4,
                       "rollout_reruns": reruns},
        )  # fmt: skip
        processes.worker(redis_url, "a")
        processes.worker(redis_url, "b")
        trainer = processes.trainer(run.args())
        wait_for(lambda: llm.held_at_least(1), 60, "a request hanging")
        started = time.monotonic()
        status = wait_for(
            lambda: (
                (text := render_status(Redis.from_url(redis_url), "rollouts"))
                * ("waiting for g" in text)
            ),
            10,
            "the status to say what the step waits for",
        )
        assert "rollouts [" in status, status
        assert trainer.wait(60) == 0, processes.logs()
        assert time.monotonic() - started < 30, "the step did not wait for the hang to end"
        llm.release()  # the hung job ends; nothing may be left running after it
        rows = assert_invariants(run, None, processes.logs())
    if reruns:
        assert rows[0]["pipeline/rerun_rollouts"] == 1, "only the late rollout is rerun"
        assert rows[0]["pipeline/groups_dropped"] == 0
    else:  # reported failed with the reason: its group dropped, never scored
        assert rows[0]["pipeline/groups_dropped/failed_rollout:RolloutDeadline"] == 1


FAILING_BWRAP = """#!/bin/sh
# bubblewrap that cannot create its namespaces (Docker's default seccomp, userns restrictions);
# the first {failures} starts fail, then the real one runs.
n=$(ls "{starts}" | wc -l); touch "{starts}/$$"
if [ "$n" -lt {failures} ]; then
    echo "bwrap: setting up uid map: Permission denied" >&2
    exit 1
fi
exec {real} "$@"
"""


@pytest.mark.parametrize("failures", [None, 2], ids=["never-starts", "fails-twice"])
def test_sandbox_that_cannot_start_is_infrastructure_never_reward_0(
    failures: int | None,
    request: pytest.FixtureRequest,
    redis_url: str,
    llm: ScriptedLLM,
    dataset: Path,
    tmp_path: Path,
    processes: Processes,
) -> None:
    real = shutil.which("bwrap")
    if real is None:
        pytest.skip("bubblewrap is not installed")
    # Outside pytest's private tmp dir: the worker runs it as the sandbox's own uid.
    shadow = Path(tempfile.mkdtemp(prefix="failing-bwrap-"))
    request.addfinalizer(lambda: shutil.rmtree(shadow, ignore_errors=True))
    starts = shadow / "starts"
    starts.mkdir()
    shadow.chmod(0o755)
    starts.chmod(0o1777)
    script = shadow / "bwrap"
    never = 10**9
    script.write_text(FAILING_BWRAP.format(real=real, starts=starts, failures=failures or never))
    script.chmod(0o755)
    env = {"PATH": f"{shadow}:{os.environ['PATH']}"}
    run = FaultRun(
        redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=90,
        overrides={"rollout_retries": 2},
    )  # fmt: skip
    processes.worker(redis_url, "a", env=env)
    rows = assert_invariants(run, processes.trainer(run.args()), processes.logs())
    if failures is None:  # every rollout failed as SandboxError: every group dropped
        assert train_calls(run.art_path) == []
        assert all(r["pipeline/groups_dropped/failed_rollout:SandboxError"] == 2 for r in rows)
        assert "setting up uid map: Permission denied" in processes.logs()
    else:  # the rollouts that met the broken sandbox got a fresh one
        assert sum(r["pipeline/groups_trained"] for r in rows) == 4
        assert sum(r["pipeline/retried_rollouts"] for r in rows) >= 1
