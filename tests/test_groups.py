"""Assembling a step's results into the groups ART trains on."""

from __future__ import annotations

from common.wire import ErrorInfo, RolloutJob, RolloutResult, WireItem, WireTrajectory
from tests.fakes.scripted_llm import completion
from tests.jobs import rollout_job
from trainer.groups import GroupResults, assemble_groups


def result(
    group: int,
    index: int,
    *,
    truncated: bool = False,
    failed: bool = False,
    reward: float | None = None,
) -> RolloutResult:
    choice = completion("m@0", "hi", 3)["choices"][0]
    trajectory = WireTrajectory(
        messages_and_choices=[WireItem(kind="choice", data=choice)],
        reward=float(index % 2) if reward is None else reward,
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


def job(group: int, policy_step: int = 0) -> RolloutJob:
    return rollout_job(
        "x", run_id="r", group=group, rollouts_per_group=3, instance_id=f"task{group}",
        problem_statement="x", policy_step=policy_step, lease_ttl_s=2,
    )  # fmt: skip


def groups_with(*results: RolloutResult, groups: int = 3) -> list[GroupResults]:
    held = [GroupResults(job(g)) for g in range(groups)]
    for n, r in enumerate(results):
        held[r.group_index].add(f"0-{n}", r)
    return held


def test_complete_groups_train_and_failures_drop_the_whole_group() -> None:
    groups = groups_with(
        *(result(0, i) for i in range(3)),
        result(1, 0), result(1, 1), result(1, 2, failed=True),
        result(2, 0), result(2, 1), result(2, 1),  # a duplicate, and rollout 2 never came
    )  # fmt: skip
    assert groups[2].duplicates == 1 and not groups[2].complete and groups[2].missing() == [2]
    assembled = assemble_groups(groups)
    assert [len(g.trajectories) for g in assembled.groups] == [3]
    assert assembled.groups[0].metadata["instance_id"] == "task0"
    assert assembled.dropped == {"failed_rollout:EndpointError": 1, "incomplete": 1}


def test_truncated_rollouts_are_scored_or_masked() -> None:
    groups = groups_with(
        result(0, 0), result(0, 1, truncated=True), result(0, 2),
        result(1, 0, truncated=True), result(1, 1, truncated=True), result(1, 2),
        groups=2,
    )  # fmt: skip
    scored = assemble_groups(groups)
    assert [len(g.trajectories) for g in scored.groups] == [3, 3]
    masked = assemble_groups(groups, mask_truncated=True)
    assert [len(g.trajectories) for g in masked.groups] == [2]
    assert masked.dropped == {"masked_truncated": 1}


def test_zero_variance_groups_are_dropped_unless_kept() -> None:
    groups = groups_with(
        *(result(0, i, reward=1.0) for i in range(3)),  # all equal: no signal
        *(result(1, i) for i in range(3)),  # 0, 1, 0
        groups=2,
    )
    dropped = assemble_groups(groups, keep_zero_variance=False)
    assert [g.metadata["group_index"] for g in dropped.groups] == [1]
    assert dropped.dropped == {"zero_variance": 1}
    kept = assemble_groups(groups, keep_zero_variance=True)
    assert len(kept.groups) == 2 and not kept.dropped


def test_an_ok_copy_beats_a_failed_one() -> None:
    group = GroupResults(job(0))
    group.add("1", result(0, 0, failed=True))
    group.add("2", result(0, 0))  # the job ran twice; the second run succeeded
    group.add("3", result(0, 0, failed=True))
    assert group.results[0].status == "ok" and group.duplicates == 2
    group.fail_rollout(1, ErrorInfo(type="RolloutDeadline", message="late"))
    assert group.missing() == [2] and group.failed == 1
    assert not group.add("4", result(0, 7))
    assert group.missing() == [2] and group.out_of_range == 1, "never completes the group"
