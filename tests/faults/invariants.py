"""The invariants every fault test asserts, whatever the fault: one shared check.

- every step is trained exactly once (a step whose every group was dropped is logged, not trained);
- every trained group is complete, with one scenario, and trainable, sampled from a policy at
  most --max-steps-off-policy steps older than the one it trains;
- no infrastructure failure is scored: failures only ever drop their group;
- nothing is left running: no job started or taken off the queue, no lease, the trainer gone;
- the wall time is bounded.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis
from rq.registry import StartedJobRegistry

from common import keys
from common.queue import rollout_queue
from tests.conftest import history, train_calls, trainer_args, wait_for
from tests.tokenizer import assert_art_trainable

GROUPS, ROLLOUTS, STEPS = 2, 3, 2


@dataclass
class FaultRun:
    """One training run under a fault: its flags, where it writes, and when it began."""

    redis_url: str
    llm_url: str
    dataset: Path
    art_path: Path
    max_wall_s: float
    overrides: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    steps: int = STEPS
    groups: int = GROUPS
    rollouts: int = ROLLOUTS

    def args(self) -> list[str]:
        values = {"lease_ttl_s": 2, "rollout_deadline_s": 20, "request_timeout_s": 20}
        return trainer_args(
            self.redis_url, self.llm_url, self.dataset, self.art_path, **(values | self.overrides)
        )


def step_metrics(art_path: Path) -> list[dict[str, Any]]:
    """One history row per completed step (the rows carrying the pipeline's figures)."""
    return [h for h in history(art_path) if "pipeline/groups_dropped" in h]


def assert_invariants(
    run: FaultRun, trainer: subprocess.Popen | None = None, logs: str = ""
) -> list[dict[str, Any]]:
    """Check the five invariants; returns the per-step metrics for fault-specific checks."""
    if trainer is not None:
        assert trainer.wait(max(1.0, run.max_wall_s - (time.monotonic() - run.started))) == 0, logs
    elapsed = time.monotonic() - run.started
    assert elapsed < run.max_wall_s, f"took {elapsed:.0f}s, bound {run.max_wall_s}s"

    rows = step_metrics(run.art_path)
    assert len(rows) == run.steps, f"each step logged once: {len(rows)} rows\n{logs}"
    trained_steps = [r for r in rows if r["pipeline/groups_trained"] > 0]
    calls = train_calls(run.art_path)
    assert [c["step"] for c in calls] == list(range(1, len(trained_steps) + 1)), (
        "every step trained exactly once"
    )
    off_policy = int(run.overrides.get("max_steps_off_policy", 0))
    scenarios: list[str] = []
    trainable: list[list[bool] | None] = []
    for call in calls:
        for group in call["groups"]:
            assert group["size"] == run.rollouts, "a trained group is complete"
            assert len(group["instance_ids"]) == 1, "one scenario per group"
            trainable.append(group["trainable"])
            # A real rollout reports its own metrics; a failure never became a trajectory.
            assert all("finished" in m and "steps" in m for m in group["metrics"])
            scenarios += group["instance_ids"]
            staleness = call["step"] - 1 - min(group["policy_versions"])
            assert 0 <= staleness <= off_policy, "a group trained within the staleness bound"
    assert len(scenarios) == len(set(scenarios)), "no scenario trained twice"
    assert_art_trainable(trainable)  # every trajectory has tokens ART trains on
    for row in rows:
        # A step takes --groups-per-step complete groups; groups made too stale by the step
        # before (asynchronous mode) are dropped beside them.
        stale = row.get("pipeline/groups_dropped/stale", 0)
        assert row["pipeline/groups_trained"] + row["pipeline/groups_dropped"] - stale == run.groups
        if row.get("pipeline/failed_rollouts"):  # (a step recovered after a crash has none)
            dropped_for_failures = sum(
                v for k, v in row.items() if k.startswith("pipeline/groups_dropped/failed_rollout")
            )
            assert dropped_for_failures >= 1, "a failed rollout drops its group, never scores 0"

    redis = Redis.from_url(run.redis_url)
    queue = rollout_queue("rollouts", redis)

    def idle() -> bool:
        return (
            StartedJobRegistry(queue=queue).count == 0
            and redis.llen(queue.intermediate_queue_key) == 0
            and not list(redis.scan_iter(match=keys.job_lease("*")))
        )

    wait_for(idle, 30, "no job left running, taken or leased")
    return rows
