"""Collecting one step's rollouts and turning them into the groups ART trains on.

A group is complete when every one of its rollouts has reported, as a trajectory or as a failure.
Policy for failures: a group with any failed rollout (an infrastructure error that outlived its
retries) is dropped whole. Training on the survivors would compute advantages against a baseline
missing exactly the rollouts that met trouble, and scoring them 0 would punish the model for our
infrastructure. Dropped groups are counted, with the reason, in the step's metrics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import art

from common.wire import ErrorInfo, RolloutResult
from trainer.trajectories import to_art_trajectory


@dataclass
class StepResults:
    """Everything received for one step, deduplicated by rollout id (the first ok copy wins)."""

    step: int
    groups: int
    rollouts_per_group: int
    results: dict[int, dict[int, RolloutResult]] = field(default_factory=dict)
    entry_ids: list[str] = field(default_factory=list)  # to acknowledge after the checkpoint
    # ART's objects already built at the boundary (the collector), by (group, rollout) index
    built: dict[tuple[int, int], art.Trajectory] = field(default_factory=dict)
    duplicates: int = 0
    out_of_range: int = 0

    def add(
        self, entry_id: str, result: RolloutResult, trajectory: art.Trajectory | None = None
    ) -> bool:
        """Record a result (with its trajectory as ART's objects when already built); False
        when it is a duplicate of one already held. An ok copy replaces a failed one (a job
        that ran twice may have failed once)."""
        self.entry_ids.append(entry_id)
        if not (
            0 <= result.group_index < self.groups
            and 0 <= result.rollout_index < self.rollouts_per_group
        ):
            self.out_of_range += 1  # not a rollout of this step's shape: never completes a group
            return False
        group = self.results.setdefault(result.group_index, {})
        held = group.get(result.rollout_index)
        if held is not None:
            self.duplicates += 1
            if held.status == "failed" and result.status == "ok":
                group[result.rollout_index] = result
                self._keep(result, trajectory)
                return True
            return False
        group[result.rollout_index] = result
        self._keep(result, trajectory)
        return True

    def _keep(self, result: RolloutResult, trajectory: art.Trajectory | None) -> None:
        if trajectory is not None:
            self.built[(result.group_index, result.rollout_index)] = trajectory

    def art_trajectory(self, result: RolloutResult) -> art.Trajectory:
        """The result's trajectory as ART's objects: the one built at the boundary, or now."""
        built = self.built.get((result.group_index, result.rollout_index))
        if built is None:
            assert result.trajectory is not None
            built = to_art_trajectory(result.trajectory)
        return built

    def missing(self, group_index: int) -> list[int]:
        """Rollout indexes of the group that have not reported yet."""
        group = self.results.get(group_index, {})
        return [i for i in range(self.rollouts_per_group) if i not in group]

    def fail_missing(self, group_index: int, error: ErrorInfo) -> None:
        """A job that died for good: its rollouts that never reported count as failed."""
        for index in self.missing(group_index):
            self.fail_rollout(group_index, index, error)

    def fail_rollout(self, group_index: int, index: int, error: ErrorInfo) -> None:
        """A rollout that never arrived, after its reruns: failed, with the reason."""
        group = self.results.setdefault(group_index, {})
        group.setdefault(index, _failed_placeholder(self.step, group_index, index, error))

    def group_complete(self, group_index: int) -> bool:
        return len(self.results.get(group_index, {})) == self.rollouts_per_group

    @property
    def complete(self) -> bool:
        return all(self.group_complete(g) for g in range(self.groups))

    @property
    def received(self) -> int:
        return sum(len(g) for g in self.results.values())

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for g in self.results.values() for r in g.values())

    def all_results(self) -> list[RolloutResult]:
        return [r for g in self.results.values() for r in g.values()]


@dataclass(frozen=True)
class AssembledGroups:
    groups: list[art.TrajectoryGroup]
    dropped: Counter[str]  # reason -> number of groups


def assemble_groups(step_results: StepResults, mask_truncated: bool = False) -> AssembledGroups:
    """Complete groups -> `art.TrajectoryGroup`s, one scenario each, in group order.

    With `mask_truncated`, rollouts that hit a limit are left out of their group; a group left
    with fewer than two rollouts has no baseline and is dropped."""
    groups: list[art.TrajectoryGroup] = []
    dropped: Counter[str] = Counter()
    for group_index in range(step_results.groups):
        results = step_results.results.get(group_index, {})
        failures = [r for r in results.values() if r.status == "failed"]
        if len(results) < step_results.rollouts_per_group:
            dropped["incomplete"] += 1
            continue
        if failures:
            dropped[
                f"failed_rollout:{failures[0].error.type if failures[0].error else 'unknown'}"
            ] += 1
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
        trajectories = [step_results.art_trajectory(r) for r in kept]
        groups.append(
            art.TrajectoryGroup(
                trajectories,
                metadata={"instance_id": ordered[0].instance_id, "group_index": group_index},
            )
        )
    return AssembledGroups(groups, dropped)


def _failed_placeholder(step: int, group_index: int, index: int, error: ErrorInfo) -> RolloutResult:
    return RolloutResult(
        run_id="",
        job_id="",
        rollout_id=f"missing-{step}-{group_index}-{index}",
        step=step,
        group_index=group_index,
        rollout_index=index,
        instance_id="",
        policy_step=-1,
        status="failed",
        error=error,
        enqueued_at=0.0,
        started_at=0.0,
        finished_at=0.0,
    )
