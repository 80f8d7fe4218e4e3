"""Periodic evaluation: held-out scenarios through the same workers, never trained.

Every `--eval-every` policy versions (the base model's included, as the seed's
`step % eval_steps == 0`), `--eval-size` scenarios of `--eval-split` are run `--eval-rollouts`
times each from that exact policy (`name@step`), on a queue of their own that workers serve
first. The training loop only polls it, so an evaluation never holds up a training step; a
finished round is logged with `model.log(..., split="val")` and to W&B at its policy's step.
Jobs are keyed by the policy step: a restarted trainer adopts a round in flight.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from common.config import ExperimentConfig
from common.queue import eval_queue_name, rollout_queue
from common.wire import PolicyRef
from producer import Task, load_tasks
from trainer.admission import build_job
from trainer.collector import ResultCollector
from trainer.dispatch import Dispatcher
from trainer.gather import Gatherer
from trainer.groups import GroupResults, assemble_groups
from trainer.observability import WandbLogger
from trainer.services import LocalServices

log = logging.getLogger(__name__)


def eval_run_id(run_key: str) -> str:
    """Evaluation jobs and results live under a run id of their own (never a training group)."""
    return f"{run_key}-eval"


@dataclass
class Evaluator:
    config: ExperimentConfig
    tasks: list[Task]
    gatherer: Gatherer
    run_id: str
    grader_url: str
    rounds: dict[int, list[GroupResults]] = field(default_factory=dict)  # policy step -> groups
    logged: set[int] = field(default_factory=set)  # policy steps whose round is logged

    @classmethod
    def create(
        cls,
        config: ExperimentConfig,
        connection: Any,
        run_key: str,
        services: LocalServices,
        grader_url: str,
    ) -> Evaluator | None:
        if not config.eval_every:
            return None
        assert config.eval_split is not None  # the config refuses --eval-every without it
        tasks = load_tasks(config.dataset, config.eval_split, config.eval_size).tasks
        run_id = eval_run_id(run_key)
        queue = rollout_queue(eval_queue_name(config.queue_name), connection)
        dispatcher = Dispatcher(
            queue, config.job_timeout_s, config.job_retries, config.lease_ttl_s,
            config.rollout_deadline_s, config.rollout_reruns,
        )  # fmt: skip
        logged: set[int] = set()
        gatherer = Gatherer(
            ResultCollector(connection, run_id), dispatcher, services, config.lease_ttl_s / 2,
            is_settled=lambda key: key[0] in logged, publish_status=lambda *args: None,
        )  # fmt: skip
        log.info("evaluating every %d steps on %d scenarios of %s", config.eval_every,
                 len(tasks), config.eval_split)  # fmt: skip
        return cls(config, tasks, gatherer, run_id, grader_url, logged=logged)

    def start_if_due(self, policy: PolicyRef) -> None:
        """Start the round of this policy version when it is one to evaluate."""
        step = policy.policy_step
        if step % self.config.eval_every or step in self.rounds or step in self.logged:
            return
        self.rounds[step] = []
        for index, task in enumerate(self.tasks):
            job = build_job(
                self.config, self.run_id, self.grader_url, (step, index), task, policy,
                self.config.eval_rollouts,
            )  # fmt: skip
            self.gatherer.start(job)
            self.rounds[step].append(self.gatherer.groups[(step, index)])

    @property
    def running(self) -> bool:
        return bool(self.rounds)

    async def poll(self, model: Any, wandb: WandbLogger | None, block_ms: int = 1) -> None:
        """Read what arrived (without holding up the training loop); log finished rounds."""
        if not self.rounds:
            return
        polled = await asyncio.to_thread(self.gatherer.collector.poll, block_ms)
        self.gatherer.take(polled, min(self.rounds), "evaluating")
        for step, groups in list(self.rounds.items()):
            if all(g.complete for g in groups):
                await self._log_round(step, groups, model, wandb)

    async def _log_round(
        self, step: int, groups: list[GroupResults], model: Any, wandb: WandbLogger | None
    ) -> None:
        assembled = assemble_groups(groups, keep_zero_variance=True)
        metrics = {
            "eval/groups": float(len(assembled.groups)),
            "eval/groups_failed": float(sum(assembled.dropped.values())),
        }
        await model.log(assembled.groups or None, split="val", metrics=metrics, step=step)
        if wandb is not None:
            wandb.log_step(step, metrics, assembled.groups, split="val")
        rewards = [t.reward for g in assembled.groups for t in g.trajectories]
        log.info(
            "evaluation of step %d: %d scenarios, mean reward %.3f (%d groups failed)",
            step, len(assembled.groups), sum(rewards) / max(1, len(rewards)),
            sum(assembled.dropped.values()),
        )  # fmt: skip
        self.logged.add(step)
        del self.rounds[step]
        entries = [e for g in groups for e in self.gatherer.settle(g.key)]
        self.gatherer.collector.ack(entries)

    async def drain(self, model: Any, wandb: WandbLogger | None) -> None:
        """Training is over: finish the rounds under way (each is bounded by the rollout
        deadlines and reruns, like any group)."""
        while self.rounds:
            await self.poll(model, wandb, block_ms=500)
