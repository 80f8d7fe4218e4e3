"""Reward functions: pure functions of a rollout's outcome.

A reward function takes a `RewardInput` and returns a float. Swap one in with
`config.reward_fn = ...` or `--reward-fn module:function`; workers import it by that path.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RewardInput:
    """What a reward function may look at once a rollout has ended."""

    finished: bool  # the agent called finish()
    truncated: bool  # the rollout hit --max-steps or --max-context-tokens
    steps: int
    # Per-test statuses from the grader (None when grading is off, `--grader none`).
    test_results: dict[str, str] | None = None
    expected: dict[str, str] = field(default_factory=dict)


def finished_reward(outcome: RewardInput) -> float:
    """1.0 when the agent called finish(), else 0.0. For runs without a grader (`--grader none`):
    pipeline smoke tests and benchmarks, never a measure of task success."""
    return 1.0 if outcome.finished else 0.0
