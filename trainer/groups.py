"""One scenario group's rollouts as they arrive, and the groups ART trains on.

A group is complete when every one of its rollouts has reported, as a trajectory or as a failure.
Policy for failures: a group with any failed rollout (an infrastructure error that outlived its
retries) is dropped whole. Training on the survivors would compute advantages against a baseline
missing exactly the rollouts that met trouble, and scoring them 0 would punish the model for our
infrastructure. A group whose rewards are all equal has no GRPO signal and is dropped too (unless
`--keep-zero-variance`). Dropped groups are counted, with the reason, in the step's metrics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import art

from common.wire import ErrorInfo, RolloutJob, RolloutResult
from trainer.trajectories import to_art_trajectory

GroupKey = tuple[int, int]  # (batch, group index): the step and group index of its job id


def group_key(item: RolloutJob | RolloutResult) -> GroupKey:
    return (item.step, item.group_index)


@dataclass
class GroupResults:
    """Everything received for one group, deduplicated by rollout index (the first ok copy
    wins; an ok copy replaces a failed one: a job that ran twice may have failed once)."""

    job: RolloutJob  # the group's first attempt, pinned to the policy it samples from
    results: dict[int, RolloutResult] = field(default_factory=dict)
    entry_ids: list[str] = field(default_factory=list)  # to acknowledge once settled
    built: dict[int, art.Trajectory] = field(default_factory=dict)  # ART's objects, by index
    duplicates: int = 0
    out_of_range: int = 0
    completed_at: float | None = None  # monotonic time it completed (training order)

    @property
    def key(self) -> GroupKey:
        return group_key(self.job)

    @property
    def policy_step(self) -> int:
        """The policy version every rollout of the group sampled from."""
        return self.job.policy.policy_step

    @property
    def size(self) -> int:
        return self.job.rollouts_per_group

    def add(
        self, entry_id: str, result: RolloutResult, trajectory: art.Trajectory | None = None
    ) -> bool:
        """Record a result (with its trajectory as ART's objects when already built); False
        when it is a duplicate of one already held or not a rollout of this group's shape."""
        self.entry_ids.append(entry_id)
        if not 0 <= result.rollout_index < self.size:
            self.out_of_range += 1  # never completes the group
            return False
        held = self.results.get(result.rollout_index)
        if held is not None:
            self.duplicates += 1
            if not (held.status == "failed" and result.status == "ok"):
                return False
        self.results[result.rollout_index] = result
        if trajectory is not None:
            self.built[result.rollout_index] = trajectory
        return True

    def art_trajectory(self, result: RolloutResult) -> art.Trajectory:
        """The result's trajectory as ART's objects: the one built at the boundary, or now."""
        built = self.built.get(result.rollout_index)
        if built is None:
            assert result.trajectory is not None
            built = to_art_trajectory(result.trajectory)
        return built

    def missing(self) -> list[int]:
        """Rollout indexes that have not reported yet."""
        return [i for i in range(self.size) if i not in self.results]

    def fail_missing(self, error: ErrorInfo) -> None:
        """A job that died for good: its rollouts that never reported count as failed."""
        for index in self.missing():
            self.fail_rollout(index, error)

    def fail_rollout(self, index: int, error: ErrorInfo) -> None:
        """A rollout that never arrived, after its reruns: failed, with the reason."""
        self.results.setdefault(index, _failed_placeholder(self.job, index, error))

    @property
    def complete(self) -> bool:
        return len(self.results) == self.size

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.results.values())


@dataclass(frozen=True)
class AssembledGroups:
    groups: list[art.TrajectoryGroup]
    dropped: Counter[str]  # reason -> number of groups


def assemble_groups(
    complete: list[GroupResults], mask_truncated: bool = False, keep_zero_variance: bool = True
) -> AssembledGroups:
    """Complete groups -> `art.TrajectoryGroup`s, one scenario each, in the order given.

    With `mask_truncated`, rollouts that hit a limit are left out of their group; a group left
    with fewer than two rollouts has no baseline and is dropped. Without `keep_zero_variance`,
    a group whose rewards are all equal is dropped (its advantages are all zero)."""
    groups: list[art.TrajectoryGroup] = []
    dropped: Counter[str] = Counter()
    for group in complete:
        results = group.results
        failures = [r for r in results.values() if r.status == "failed"]
        if len(results) < group.size:
            dropped["incomplete"] += 1
            continue
        if failures:
            error = failures[0].error
            dropped[f"failed_rollout:{error.type if error else 'unknown'}"] += 1
            continue
        ordered = [results[i] for i in sorted(results)]
        kept = [
            r
            for r in ordered
            if r.trajectory and not (mask_truncated and r.trajectory.metrics.get("truncated"))
        ]
        if len(kept) < 2 <= len(ordered):
            dropped["masked_truncated"] += 1
            continue
        trajectories = [group.art_trajectory(r) for r in kept]
        if not keep_zero_variance and len({t.reward for t in trajectories}) == 1:
            dropped["zero_variance"] += 1
            continue
        batch, index = group.key
        groups.append(
            art.TrajectoryGroup(
                trajectories,
                metadata={
                    "instance_id": ordered[0].instance_id,
                    "batch": batch,
                    "group_index": index,
                    "policy_step": group.policy_step,
                },
            )
        )
    return AssembledGroups(groups, dropped)


def _failed_placeholder(job: RolloutJob, index: int, error: ErrorInfo) -> RolloutResult:
    return RolloutResult(
        run_id="",
        job_id="",
        rollout_id=f"missing-{job.step}-{job.group_index}-{index}",
        step=job.step,
        group_index=job.group_index,
        rollout_index=index,
        instance_id=job.scenario.instance_id,
        policy_step=job.policy.policy_step,
        status="failed",
        error=error,
        enqueued_at=0.0,
        started_at=0.0,
        finished_at=0.0,
    )
