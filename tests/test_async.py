"""Asynchronous training, over-provisioning and zero-variance groups, through the real pipeline:
real Redis, real RQ workers in their own processes, the real trainer loop, the scripted LLM for
vLLM and the recording backend (with a simulated training time) for the GPU."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from redis import Redis
from rq.job import Job

from common import keys
from common.config import ExperimentConfig
from common.flags import parse_config
from common.queue import SERIALIZER
from tests.conftest import history, pipeline_state, train_calls, trainer_args
from tests.fakes.recording_backend import TRAIN_S_ENV
from tests.fakes.scripted_llm import ScriptedLLM, finish_at_once
from trainer.loop import run_training

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(redis_url: str, llm: ScriptedLLM, dataset: Path, art_path: Path, **flags: object):
    args = trainer_args(redis_url, llm.url, dataset, art_path, **flags)
    return asyncio.run(run_training(parse_config(args, ExperimentConfig, "trainer")))


def _staleness(call: dict) -> list[int]:
    """Per trained group: how many policy versions older than the model it trained."""
    return [call["step"] - 1 - min(g["policy_versions"]) for g in call["groups"]]


def test_groups_start_while_train_runs_and_stay_within_the_staleness_bound(
    redis_url: str, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TRAIN_S_ENV, "2.0")  # each train() takes two seconds
    art_path = tmp_path / "art"
    with ScriptedLLM(delay_s=0.05) as llm:
        state = _run(
            redis_url, llm, dataset, art_path, max_steps_off_policy=1, local_workers=2,
            dataset_size=6, rollouts_per_group=2, max_concurrent=4,  # two groups run at once
        )  # fmt: skip

    assert state.last_completed_step == 2
    calls = train_calls(art_path)
    assert [c["step"] for c in calls] == [1, 2, 3], "each step trained exactly once"
    staleness = [s for call in calls for s in _staleness(call)]
    assert all(0 <= s <= 1 for s in staleness), staleness
    assert 1 in staleness, "groups sampled before the previous step trained were used"
    scenarios = [i for call in calls for g in call["groups"] for i in g["instance_ids"]]
    assert len(scenarios) == 6 == len(set(scenarios)), "every group trained once"
    # Groups of later steps ran while train() ran: a job's run overlaps a train() window.
    redis = Redis.from_url(redis_url)
    run_key = pipeline_state(art_path)["run_key"]
    jobs = [
        Job.fetch(keys.job_id(run_key, b, i), redis, serializer=SERIALIZER)
        for b in range(3)
        for i in range(2)
    ]
    windows = [(c["started_at"], c["finished_at"]) for c in calls]
    overlapping = [
        job.id
        for job in jobs
        if any(job.started_at.timestamp() < b and job.ended_at.timestamp() > a for a, b in windows)
    ]
    assert overlapping, "no rollout ran while train() ran"
    rows = [h for h in history(art_path) if "pipeline/staleness_max" in h]
    assert len(rows) == 3 and max(r["pipeline/staleness_max"] for r in rows) == 1


def test_synchronous_over_provisioning_trains_the_first_complete_and_cancels_the_rest(
    redis_url: str, dataset: Path, tmp_path: Path
) -> None:
    art_path = tmp_path / "art"
    with ScriptedLLM(delay_s=0.05) as llm:
        state = _run(
            redis_url, llm, dataset, art_path, over_provision=1, local_workers=2,
            dataset_size=4, rollouts_per_group=2, max_concurrent=6,
        )  # fmt: skip

    assert state.last_completed_step == 1
    calls = train_calls(art_path)
    assert [len(c["groups"]) for c in calls] == [2, 2], "the first --groups-per-step complete"
    assert all(s == 0 for call in calls for s in _staleness(call)), "synchronous: on-policy"
    rows = [h for h in history(art_path) if "pipeline/groups_cancelled" in h]
    for row in rows:  # one spare per step, cancelled in flight or dropped complete
        spare = row["pipeline/groups_cancelled"] + row.get("pipeline/groups_dropped/stale", 0)
        assert spare == 1, row
    redis = Redis.from_url(redis_url)
    run_key = pipeline_state(art_path)["run_key"]
    cancelled = [
        keys.job_id(run_key, b, i)
        for b in range(2)
        for i in range(3)
        if redis.exists(keys.group_cancelled(keys.job_id(run_key, b, i)))
    ]
    assert len(cancelled) == sum(r["pipeline/groups_cancelled"] for r in rows)


def test_zero_variance_groups_are_dropped_and_a_collapse_is_warned(
    redis_url: str, dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    art_path = tmp_path / "art"
    with ScriptedLLM(script=finish_at_once) as llm, caplog.at_level(logging.WARNING):
        _run(
            redis_url, llm, dataset, art_path, keep_zero_variance=False, local_workers=2,
            dataset_size=6, rollouts_per_group=2, max_concurrent=4,
        )  # fmt: skip

    assert train_calls(art_path) == [], "every rollout scored 1: nothing to learn from"
    rows = [h for h in history(art_path) if "pipeline/groups_dropped" in h]
    assert [r["pipeline/groups_dropped/zero_variance"] for r in rows] == [2, 2, 2]
    assert "steps 0..2: most groups had all-equal rewards" in caplog.text
