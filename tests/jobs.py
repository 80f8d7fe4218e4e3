"""Rollout limits and jobs for tests, built as the trainer builds them: limits by
`ExperimentConfig.rollout_limits()`, jobs by `trainer.admission.build_job`. A test names only
what it varies (any `ExperimentConfig` field, or the job's own: scenario, step, group, ...)."""

from __future__ import annotations

from typing import Any

from common.config import ExperimentConfig
from common.wire import GradingSpec, PolicyRef, RolloutJob, RolloutLimits, Scenario
from producer import Task
from trainer.admission import build_job

# Limits of a scripted rollout that ends quickly: a few steps, short waits, no retries.
FAST: dict[str, Any] = {
    "max_steps": 4, "max_context_tokens": 10_000, "max_completion_tokens": 64,
    "code_timeout_s": 20, "max_output_chars": 1000, "request_timeout_s": 30,
    "rollout_retries": 0, "retry_backoff_s": 0.01,
}  # fmt: skip
# Job settings of tests: no repository cache, a reward that needs no grader.
JOB: dict[str, Any] = {"cache_dir": "", "reward_fn": "common.rewards:finished_reward"}
NO_GRADING = GradingSpec(docker_image="none", expected={})  # a task's, left out with grader none


def rollout_limits(**overrides: Any) -> RolloutLimits:
    """`FAST` limits with `overrides`, through the config (so within its ranges)."""
    return ExperimentConfig(**{**FAST, **overrides}).rollout_limits()


def rollout_job(
    endpoint: str = "http://x",
    *,
    run_id: str = "t",
    step: int = 0,
    group: int = 0,
    rollouts_per_group: int = 1,
    instance_id: str = "toy__0",
    problem_statement: str = "Fix it.",
    grading: GradingSpec | None = None,
    grader_url: str = "",
    policy_step: int = 0,
    limits: RolloutLimits | None = None,
    **config: Any,
) -> RolloutJob:
    """Group `group` of step `step`: `rollouts_per_group` rollouts of one scenario from policy
    `m@<policy_step>` at `endpoint`, with `FAST` limits and `config` (ExperimentConfig fields:
    limits, reward_fn, lease_ttl_s, grade_unfinished, ...). Graded by the Docker grader when
    `grading` is given, else with grader none. `limits` replaces the config's, for a value the
    config refuses; `enqueued_at` is 0.0."""
    settings = ExperimentConfig(
        **{**FAST, **JOB, "grader": "docker" if grading else "none", **config}
    )
    scenario = Scenario(instance_id=instance_id, problem_statement=problem_statement)
    task = Task(scenario, grading or NO_GRADING)
    policy = PolicyRef(
        inference_name=f"m@{policy_step}", policy_step=policy_step, endpoint=endpoint
    )
    job = build_job(settings, run_id, grader_url, (step, group), task, policy, rollouts_per_group)
    return job.model_copy(update={"enqueued_at": 0.0, "limits": limits or job.limits})
