"""The queue pipeline end to end: real Redis, real RQ workers in their own processes, the real
trainer loop, the scripted LLM standing in for vLLM and the recording backend for the GPU."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from pathlib import Path

import msgpack
import psutil
import pytest
from redis import Redis
from rq import Queue, Worker

from common import keys
from common.config import ExperimentConfig
from common.flags import parse_config
from common.queue import SERIALIZER
from common.wire import RolloutResult, decode
from tests.conftest import (
    Processes,
    assert_nothing_left_running,
    descendants,
    history,
    model_dir,
    pipeline_state,
    train_calls,
    trainer_args,
    wait_for,
)
from tests.fakes.recording_backend import CRASH_AFTER_TRAIN_ENV
from tests.fakes.scripted_llm import FINISH, WANDER, ScriptedLLM
from tests.tokenizer import assert_art_trainable
from trainer.backend import TRAIN_PARAMS
from trainer.loop import run_training
from trainer.status import render_status

pytestmark = pytest.mark.integration

GROUPS, ROLLOUTS, STEPS = 2, 3, 2


def results_stream(art_path: Path) -> str:
    state = wait_for(lambda: pipeline_state(art_path), 60, "the trainer's first state")
    return keys.results_stream(state["run_key"])


def assert_trained_correctly(art_path: Path, steps: int = STEPS, groups: int = GROUPS) -> None:
    calls = train_calls(art_path)
    assert [c["step"] for c in calls] == list(range(1, steps + 1)), "each step trained exactly once"
    seen: set[str] = set()
    trainable: list[list[bool] | None] = []
    for call in calls:
        assert len(call["groups"]) == groups
        for group in call["groups"]:
            assert group["type"] == "TrajectoryGroup"
            assert group["size"] == ROLLOUTS
            assert len(group["instance_ids"]) == 1, "one scenario per group"
            trainable.append(group["trainable"])
            assert group["policy_versions"] == [call["step"] - 1] * ROLLOUTS
            seen.update(group["instance_ids"])
    assert len(seen) == steps * groups, "no scenario repeated within the epoch"
    assert_art_trainable(trainable)


def posted(redis: Redis, stream: str) -> int:
    """Entries ever added to the stream (the trainer deletes those it checkpointed)."""
    return int(redis.xinfo_stream(stream)["entries-added"]) if redis.exists(stream) else 0


def results_on_stream(redis: Redis, stream: str, step: int) -> int:
    """Results of step `step` on the stream (none is acknowledged, so deleted, before its
    step is checkpointed)."""
    return sum(
        decode(fields[b"data"], RolloutResult).step == step
        for _, fields in redis.xrange(stream)
        if b"data" in fields
    )


def nothing_left_unacknowledged(redis_url: str, art_path: Path) -> bool:
    summary = Redis.from_url(redis_url).xpending(results_stream(art_path), keys.TRAINER_GROUP)
    return summary["pending"] == 0


@pytest.mark.slow
def test_two_steps_with_local_workers(
    redis_url: str, llm: ScriptedLLM, dataset: Path, tmp_path: Path
) -> None:
    art_path = tmp_path / "art"
    config = parse_config(
        trainer_args(redis_url, llm.url, dataset, art_path, local_workers=2, wandb_offline=True),
        ExperimentConfig,
        "trainer",
    )
    children_before = descendants()

    state = asyncio.run(run_training(config))

    assert state.last_completed_step == STEPS - 1
    assert_trained_correctly(art_path)
    assert nothing_left_unacknowledged(redis_url, art_path)
    assert {f"{config.art_model_name}@0", f"{config.art_model_name}@1"} <= llm.models_seen
    last = history(art_path)[-1]
    assert last["pipeline/rollouts"] == GROUPS * ROLLOUTS
    assert last["pipeline/failed_rollouts"] == 0
    assert last["pipeline/redis_used_memory_mb"] > 0
    # Retention: checkpointed entries left the stream; the finished run's keys expire.
    redis = Redis.from_url(redis_url)
    stream = results_stream(art_path)
    assert redis.xlen(stream) == 0
    ttl_days = redis.ttl(stream) / 86400
    assert 2.9 < ttl_days <= 3, "a finished run's keys expire after --keys-ttl-days"
    status_key = keys.trainer_status(pipeline_state(art_path)["run_key"])
    assert 2.9 < redis.ttl(status_key) / 86400 <= 3
    job_key = f"rq:job:{keys.job_id(pipeline_state(art_path)['run_key'], 0, 0)}"
    assert 0 < redis.ttl(job_key) <= 86400, "a shorter time to live is kept (RQ's result_ttl)"
    # No WANDB_API_KEY here: the run went to W&B offline, with the config and its hash.
    [offline] = (model_dir(art_path) / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb"))
    assert_nothing_left_running(children_before, "the trainer returned")
    status = render_status(Redis.from_url(redis_url), config.queue_name)
    # The run ended: the status says so, with when, instead of its last live phase.
    assert f"finished at {time.strftime('%Y-%m-%d', time.gmtime())}" in status, status
    assert f"(last step {STEPS - 1})" in status and "0 stream entries unacknowledged" in status
    assert f"step {STEPS - 1} training" not in status
    # Each step got all of backend.train()'s GRPO parameters, as configured.
    grpo = {name: getattr(config, name) for name in TRAIN_PARAMS}
    assert all(call["kwargs"] == grpo for call in train_calls(art_path))


class _OneThinksLonger:
    """Per task, conversations 0 and 1 finish at once; later ones think one turn first. So a
    group has two rollouts posted while its third is still talking to the LLM."""

    def __init__(self) -> None:
        self.started: collections.Counter[str] = collections.Counter()

    def __call__(self, messages: list[dict], rng: object) -> str:
        task = str(messages[1]["content"])
        if not any(m.get("role") == "assistant" for m in messages):
            self.started[task] += 1  # the scripted LLM calls scripts under its lock
            return FINISH if self.started[task] <= 2 else WANDER
        return FINISH


def _second_turn(body: dict) -> bool:
    return any(m.get("role") == "assistant" for m in body["messages"])


class _HoldOneGroupOfStep:
    """Holds every request of the first group (task) of `step` the LLM sees."""

    def __init__(self, step: int) -> None:
        self.suffix, self.task = f"@{step}", None

    def __call__(self, body: dict) -> bool:
        if not str(body.get("model", "")).endswith(self.suffix):
            return False
        task = str(body["messages"][1]["content"])
        self.task = self.task or task
        return task == self.task


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_worker_stopped_mid_job(
    sig: signal.Signals, redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    """One worker takes the first group; two of its rollouts are posted and the third is held
    mid-request by the LLM until the worker has been stopped: the job is provably unfinished."""
    art_path = tmp_path / "art"
    redis = Redis.from_url(redis_url)
    agent = _OneThinksLonger()
    with ScriptedLLM(script=agent, hold_when=_second_turn) as llm:
        processes.worker(redis_url, "a")
        # Replies inline: the stream's entries count rollouts (posted exactly once).
        args = trainer_args(redis_url, llm.url, dataset, art_path, post_replies_over_tokens=-1)
        trainer = processes.trainer(args)
        assert llm.wait_held(1, 60), processes.logs()
        [victim] = Worker.all(connection=redis, serializer=SERIALIZER)
        job_id = victim.get_current_job_id()
        assert job_id is not None and job_id.endswith("-s000000-g0000"), job_id
        wait_for(lambda: redis.scard(keys.posted_rollouts(job_id)) == 2, 30, "two rollouts posted")
        psutil.Process(victim.pid).send_signal(sig)
        assert psutil.Process(victim.pid).wait(30) == (0 if sig == signal.SIGTERM else -sig)
        queue = Queue("rollouts", connection=redis, serializer=SERIALIZER)
        if sig == signal.SIGTERM:
            # The worker gave its job back itself, at the front of the queue, and exited.
            assert queue.job_ids[:2] == [job_id, job_id.replace("-g0000", "-g0001")]
        llm.release()
        processes.worker(redis_url, "b")
        assert trainer.wait(120) == 0, processes.logs()

    assert_trained_correctly(art_path)
    requeued_by_trainer = sum(h["pipeline/requeued_jobs"] for h in history(art_path))
    assert requeued_by_trainer == (1 if sig == signal.SIGKILL else 0)
    # The rerun skipped the two posted rollouts: each rollout was posted once, and the rerun
    # started one conversation for the first group, not three.
    assert posted(redis, results_stream(art_path)) == STEPS * GROUPS * ROLLOUTS
    first_task = next(iter(agent.started))
    assert agent.started[first_task] == ROLLOUTS + 1


@pytest.mark.slow
@pytest.mark.parametrize("replies", ["inline", "ahead"])
def test_trainer_killed_mid_step_resumes(
    redis_url: str, dataset: Path, tmp_path: Path, processes: Processes, replies: str
) -> None:
    """`ahead`: every reply is posted before its result, so the first trainer dies holding
    replies built and unclaimed (those of the held group among them); inline, the stream's
    entries count rollouts, each posted exactly once."""
    art_path = tmp_path / "art"
    redis = Redis.from_url(redis_url)
    with ScriptedLLM(hold_when=_HoldOneGroupOfStep(1)) as llm:
        for name in ("a", "b"):
            processes.worker(redis_url, name)
        args = trainer_args(
            redis_url, llm.url, dataset, art_path,
            post_replies_over_tokens=0 if replies == "ahead" else -1,
        )  # fmt: skip
        first = processes.trainer(args)
        stream = results_stream(art_path)
        # Kill it once one group of step 1 has its rollouts in the stream while the other is
        # held mid-request by the LLM: it cannot have trained step 1.
        assert llm.wait_held(ROLLOUTS, 60), processes.logs()
        wait_for(lambda: results_on_stream(redis, stream, 1) == ROLLOUTS, 60, "step 1 results")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        llm.release()
        assert len(train_calls(art_path)) == 1
        second = processes.trainer(args)
        assert second.wait(120) == 0, processes.logs()

    assert_trained_correctly(art_path)
    if replies == "inline":
        # Every rollout was posted once: the restarted trainer reused what the first one left.
        assert posted(redis, stream) == STEPS * GROUPS * ROLLOUTS
    assert nothing_left_unacknowledged(redis_url, art_path)
    assert redis.xlen(stream) == 0, "checkpointed steps' entries are deleted from the stream"


@pytest.mark.slow
def test_crash_between_train_and_checkpoint_trains_once(
    redis_url: str, llm: ScriptedLLM, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    art_path = tmp_path / "art"
    processes.worker(redis_url, "a")
    args = trainer_args(redis_url, llm.url, dataset, art_path)
    first = processes.trainer(args, env={CRASH_AFTER_TRAIN_ENV: "1"})
    assert first.wait(120) == 137, processes.logs()
    assert pipeline_state(art_path)["last_completed_step"] == -1  # trained, never checkpointed
    assert processes.trainer(args).wait(120) == 0, processes.logs()
    assert_trained_correctly(art_path)


@pytest.mark.slow
def test_malformed_results_are_kept_aside(
    redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    art_path = tmp_path / "art"
    redis = Redis.from_url(redis_url)
    processes.worker(redis_url, "a")
    with ScriptedLLM(delay_s=0.2) as llm:
        trainer = processes.trainer(trainer_args(redis_url, llm.url, dataset, art_path))
        stream = results_stream(art_path)
        redis.xadd(stream, {"data": b"\xc1 not msgpack"})
        redis.xadd(stream, {"data": msgpack.packb({"v": 99, "type": "rollout_result", "body": {}})})
        assert trainer.wait(120) == 0, processes.logs()

    assert_trained_correctly(art_path)
    run_key = pipeline_state(art_path)["run_key"]
    letters = redis.xrange(keys.dead_letters(run_key))
    assert len(letters) == 2
    errors = sorted(fields[b"error"].decode() for _, fields in letters)
    assert "not a msgpack envelope" in errors[0] and "schema version 99" in errors[1]
    assert sum(h["pipeline/dead_letters"] for h in history(art_path)) == 2
    assert nothing_left_unacknowledged(redis_url, art_path)


def test_a_fresh_start_ignores_an_earlier_run_left_in_redis(
    redis_url: str, llm: ScriptedLLM, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    processes.worker(redis_url, "a")
    first, second = tmp_path / "first", tmp_path / "second"
    for art_path in (
        first,
        second,
    ):  # same run name, state deleted in between: Redis keeps the old jobs
        config = parse_config(
            trainer_args(redis_url, llm.url, dataset, art_path), ExperimentConfig, "t"
        )
        asyncio.run(run_training(config))
        assert_trained_correctly(art_path)
    assert pipeline_state(first)["run_key"] != pipeline_state(second)["run_key"]


def test_infrastructure_failure_drops_the_group_instead_of_scoring_zero(
    redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    art_path = tmp_path / "art"
    processes.worker(redis_url, "a")
    processes.worker(redis_url, "b")
    with ScriptedLLM(fail_when="Task 1:") as flaky:  # every request about scenario 1 gets a 503
        config = parse_config(
            trainer_args(
                redis_url,
                flaky.url,
                dataset,
                art_path,
                rollout_retries=1,
                dataset_size=2,
                groups_per_step=2,
            ),
            ExperimentConfig,
            "t",
        )
        asyncio.run(run_training(config))

    calls = train_calls(art_path)
    assert len(calls) == 1 and len(calls[0]["groups"]) == 1
    trained_ids = calls[0]["groups"][0]["instance_ids"]
    assert not any("Task 1" in i for i in trained_ids)
    last = history(art_path)[-1]
    assert last["pipeline/failed_rollouts"] == ROLLOUTS
    assert last["pipeline/groups_dropped"] == 1
    assert last["pipeline/groups_dropped/failed_rollout:EndpointError"] == 1
