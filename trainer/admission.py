"""Which groups start next, and the jobs that run them.

Groups are numbered in the order they start: batch `b` (the schedule's step `b`) holds
`groups_per_step + over_provision` of them, so number `n` is group `n % width` of batch
`n // width`, and its RQ job id is `keys.job_id(run, b, index)`: a restarted trainer rebuilds
the same jobs and finds those an earlier life enqueued.

The admission rule (AReaL, SkyRL, ART's PipelineTrainer): a group may start only while the
started-but-untrained groups stay under `(S + 1) x groups_per_step` (plus the `over_provision`
spares), where S is `--max-steps-off-policy`; with S = 0 nothing starts while `train()` runs.
Jobs in flight never exceed `--max-concurrent` rollouts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from common import keys
from common.config import ExperimentConfig, callable_path
from common.wire import PolicyRef, RolloutJob
from producer import Schedule, Task
from trainer.groups import GroupKey


@dataclass
class Admission:
    config: ExperimentConfig
    schedule: Schedule
    run_key: str
    grader_url: str

    @property
    def width(self) -> int:
        """Groups per batch: the step's own and its over-provisioned spares."""
        return self.config.groups_per_step + self.config.over_provision

    @property
    def total(self) -> int:
        """Groups the whole run may start."""
        return self.schedule.total_steps * self.width

    def key(self, number: int) -> GroupKey:
        return divmod(number, self.width)

    def number(self, key: GroupKey) -> int:
        return key[0] * self.width + key[1]

    def room(self, untrained: int, jobs_in_flight: int, training: bool) -> int:
        """How many groups may start now."""
        config = self.config
        if training and config.max_steps_off_policy == 0:
            return 0
        cap = (config.max_steps_off_policy + 1) * config.groups_per_step + config.over_provision
        max_jobs = max(1, config.max_concurrent // config.rollouts_per_group)
        return max(0, min(cap - untrained, max_jobs - jobs_in_flight))

    def job(self, number: int, policy: PolicyRef) -> RolloutJob:
        """The job of group `number`, sampling from `policy` (pinned: `name@step`)."""
        batch, index = self.key(number)
        own = self.config.groups_per_step
        task = (
            self.schedule.tasks_for_step(batch)[index]
            if index < own
            else self.schedule.extra_tasks(batch, self.config.over_provision)[index - own]
        )
        return build_job(
            self.config, self.run_key, self.grader_url, (batch, index), task, policy,
            self.config.rollouts_per_group,
        )  # fmt: skip


def build_job(
    config: ExperimentConfig,
    run_key: str,
    grader_url: str,
    key: GroupKey,
    task: Task,
    policy: PolicyRef,
    rollouts: int,
) -> RolloutJob:
    """A group job: `rollouts` rollouts of `task` from `policy`, posted to `run_key`'s stream."""
    batch, index = key
    docker = config.grader == "docker"
    return RolloutJob(
        run_id=run_key,
        job_id=keys.job_id(run_key, batch, index),
        step=batch,
        group_index=index,
        rollouts_per_group=rollouts,
        scenario=task.scenario,
        grading=task.grading if docker else None,
        grader_url=grader_url,
        grading_timeout_s=config.grading_timeout_s,
        cache_dir=config.cache_dir if docker else "",
        policy=policy,
        limits=config.rollout_limits(),
        system_prompt_fn=callable_path(config.system_prompt_fn),
        reward_fn=callable_path(config.reward_fn),
        results_stream=keys.results_stream(run_key),
        lease_ttl_s=config.lease_ttl_s,
        log_sample_rate=config.log_sample_rate,
        enqueued_at=time.time(),
        grade_unfinished=config.grade_unfinished,
    )
