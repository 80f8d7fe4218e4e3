"""Assembling a step's results into the groups ART trains on."""

from __future__ import annotations

from common.wire import ErrorInfo, RolloutResult, WireItem, WireTrajectory
from tests.fakes.scripted_llm import completion
from trainer.groups import StepResults, assemble_groups


def result(
    group: int, index: int, *, truncated: bool = False, failed: bool = False
) -> RolloutResult:
    choice = completion("m@0", "hi", 3)["choices"][0]
    trajectory = WireTrajectory(
        messages_and_choices=[WireItem(kind="choice", data=choice)],
        reward=float(index % 2),
        metrics={"truncated": truncated},
    )
    return RolloutResult(
        run_id="r", job_id=f"j{group}", rollout_id=f"j{group}-r{index}", step=0, group_index=group,
        rollout_index=index, instance_id=f"task{group}", policy_step=0,
        status="failed" if failed else "ok",
        trajectory=None if failed else trajectory,
        error=ErrorInfo(type="EndpointError", message="down") if failed else None,
        enqueued_at=0.0, started_at=0.0, finished_at=1.0,
    )  # fmt: skip


def step_with(*results: RolloutResult, groups: int = 3) -> StepResults:
    step = StepResults(step=0, groups=groups, rollouts_per_group=3)
    for n, r in enumerate(results):
        step.add(f"0-{n}", r)
    return step


def test_complete_groups_train_and_failures_drop_the_whole_group() -> None:
    step = step_with(
        *(result(0, i) for i in range(3)),
        result(1, 0), result(1, 1), result(1, 2, failed=True),
        result(2, 0), result(2, 1), result(2, 1),  # a duplicate, and rollout 2 never came
    )  # fmt: skip
    assert step.duplicates == 1 and not step.complete
    assembled = assemble_groups(step)
    assert [len(g.trajectories) for g in assembled.groups] == [3]
    assert assembled.groups[0].metadata["instance_id"] == "task0"
    assert assembled.dropped == {"failed_rollout:EndpointError": 1, "incomplete": 1}


def test_truncated_rollouts_are_scored_or_masked() -> None:
    step = step_with(
        result(0, 0), result(0, 1, truncated=True), result(0, 2),
        result(1, 0, truncated=True), result(1, 1, truncated=True), result(1, 2),
        groups=2,
    )  # fmt: skip
    scored = assemble_groups(step)
    assert [len(g.trajectories) for g in scored.groups] == [3, 3]
    masked = assemble_groups(step, mask_truncated=True)
    assert [len(g.trajectories) for g in masked.groups] == [2]
    assert masked.dropped == {"masked_truncated": 1}
