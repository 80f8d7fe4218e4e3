"""Rollouts that never called finish(), or changed nothing, get reward 0 without a grading (as
the original did), counted per step; `--grade-unfinished` grades them anyway."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from common.errors import GraderError
from common.wire import GradingSpec, RolloutJob, RolloutResult, WireTrajectory
from grader.client import GraderClient
from rollout_workers.job import score
from rollout_workers.rollout import RolloutOutcome
from tests.jobs import rollout_job
from trainer.groups import GroupResults
from trainer.metrics import step_metrics
from trainer.services import free_port

DIFF = "diff --git a/calc/ops.py b/calc/ops.py\n--- a/calc/ops.py\n+++ b/calc/ops.py\n"


def _job() -> RolloutJob:
    return rollout_job(
        instance_id="calc",
        grading=GradingSpec(docker_image="rlm-fixtures/calc_final:x", expected={"t": "PASSED"}),
        reward_fn="common.rewards:binary_test_reward",
    )


async def _score(outcome: RolloutOutcome, grade_unfinished: bool = False) -> WireTrajectory:
    from common.rewards import binary_test_reward

    # The real client, pointed at a port nobody listens on: any grading attempt raises.
    grader = GraderClient(f"http://127.0.0.1:{free_port()}", token="t", retries=0)
    try:
        return await score(
            _job(), outcome, grader, binary_test_reward, grade_unfinished=grade_unfinished
        )
    finally:
        await grader.aclose()


@pytest.mark.parametrize(
    "outcome",
    [
        RolloutOutcome(finished=False, truncated=True, steps=4, diff=DIFF, context_trims=2),
        RolloutOutcome(finished=True, steps=2, diff=""),
        RolloutOutcome(finished=True, steps=2, diff="\n"),
    ],
    ids=["no_finish", "empty_diff", "blank_diff"],
)
def test_unfinished_or_empty_gets_zero_without_a_grading(outcome: RolloutOutcome) -> None:
    trajectory = asyncio.run(_score(outcome))
    assert trajectory.reward == 0.0
    assert trajectory.metrics["grading_skipped"] is True
    assert trajectory.metrics["success"] is False  # counted as a miss in the success rate
    assert "grading_s" not in trajectory.metrics and "tampered" not in trajectory.metrics
    assert trajectory.metrics["context_trims"] == outcome.context_trims


def test_grade_unfinished_grades_anyway_and_a_finished_diff_is_graded() -> None:
    unfinished = RolloutOutcome(finished=False, truncated=True, steps=4, diff=DIFF)
    with pytest.raises(GraderError, match="unreachable"):  # it did go to the grader
        asyncio.run(_score(unfinished, grade_unfinished=True))
    with pytest.raises(GraderError, match="unreachable"):
        asyncio.run(_score(RolloutOutcome(finished=True, steps=2, diff=DIFF)))


def test_skipped_gradings_are_counted_in_the_step_metrics() -> None:
    group = GroupResults(_job().model_copy(update={"rollouts_per_group": 3}))
    for index, skipped in enumerate([True, True, False]):
        metrics = {"finished": not skipped, "grading_skipped": True} if skipped else {}
        trajectory = WireTrajectory(messages_and_choices=[], reward=0.0, metrics=metrics)
        result = RolloutResult(
            run_id="r", job_id="j0", rollout_id=f"j0-r{index}", step=0, group_index=0,
            rollout_index=index, instance_id="calc", policy_step=0, status="ok",
            trajectory=trajectory, enqueued_at=0.0, started_at=0.0, finished_at=1.0,
        )  # fmt: skip
        group.add(f"0-{index}", result)
    metrics = step_metrics([group], Counter(), wait_s=1.0, train_s=1.0)
    assert metrics["pipeline/gradings_skipped"] == 2.0


def test_grade_unfinished_travels_with_the_job(dataset) -> None:
    from common.config import ExperimentConfig
    from producer import Schedule, load_tasks
    from trainer.admission import Admission

    job = _job()
    tasks = load_tasks(str(dataset), "train").tasks
    for flag in (False, True):
        config = ExperimentConfig(grade_unfinished=flag, groups_per_step=1)
        admission = Admission(config, Schedule(tasks, 1, 1, 0), "r", "http://grader")
        assert admission.job(0, job.policy).grade_unfinished is flag


@pytest.mark.docker
@pytest.mark.integration
def test_no_grading_container_for_unfinished_rollouts(
    fixture_tasks, repo_cache, redis_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real grader beside the trainer, an agent that never calls finish(): every rollout
    scores 0, none is graded, and the step counts them."""
    from common.config import ExperimentConfig
    from common.flags import parse_config
    from common.grading import TOKEN_ENV
    from tests.conftest import history, train_calls, trainer_args
    from tests.fakes.scripted_llm import ScriptedLLM
    from trainer.loop import run_training

    dataset, tasks = fixture_tasks
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    art_path = tmp_path / "art"
    never_finishes = lambda messages, rng: "Looking around.\n```python\nprint(1)\n```"  # noqa: E731
    with ScriptedLLM(script=never_finishes) as llm:
        args = trainer_args(
            redis_url, llm.url, dataset, art_path,
            grader="docker", reward_fn="common.rewards:binary_test_reward",
            local_grader=True, cache_dir=str(repo_cache), local_workers=1,
            dataset_size=1, groups_per_step=1, rollouts_per_group=2, max_concurrent=2,
            max_steps=2,
        )  # fmt: skip
        asyncio.run(run_training(parse_config(args, ExperimentConfig, "t")))

    [call] = train_calls(art_path)
    [group] = call["groups"]
    assert group["rewards"] == [0.0, 0.0]
    for metrics in group["metrics"]:
        assert metrics["grading_skipped"] is True and "grading_s" not in metrics
    assert history(art_path)[-1]["pipeline/gradings_skipped"] == 2
