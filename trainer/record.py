"""The record stage: a trained (or skipped) step's metrics to ART's history, W&B and the
visualizer logs."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import art

from common.config import ExperimentConfig
from trainer.groups import GroupResults
from trainer.metrics import step_metrics
from trainer.observability import WandbLogger
from trainer.rlm_logs import write_rlm_logs

log = logging.getLogger(__name__)


@dataclass
class StepRecord:
    """What one training step took, trained and dropped."""

    step: int
    batch: list[GroupResults]  # the groups taken for this step
    trained: list[art.TrajectoryGroup]
    dropped: Counter[str]  # reason -> groups, the stale and zero-variance ones included
    wait_s: float  # the trainer idle, waiting for this step's groups
    staleness: list[int]  # per trained group: policy versions behind the trained model
    cancelled: int = 0  # groups in flight cancelled when this step made them too stale
    train_metrics: dict[str, float] = field(default_factory=dict)
    train_s: float = 0.0


@dataclass
class ZeroVarianceWatch:
    """Warns when most groups of `steps` consecutive steps had all-equal rewards: a policy
    that collapsed, or a reward or grader that is broken."""

    steps: int = 3
    recent: list[bool] = field(default_factory=list)  # per step: most groups zero-variance

    def observe(self, step: int, zero_variance: int, groups: int) -> None:
        self.recent = [*self.recent, groups > 0 and zero_variance * 2 > groups][-self.steps :]
        if len(self.recent) == self.steps and all(self.recent):
            log.warning(
                "steps %d..%d: most groups had all-equal rewards (no GRPO signal, dropped): "
                "has the policy collapsed, or is the reward or the grader broken? "
                "(--keep-zero-variance trains them anyway)",
                step - self.steps + 1,
                step,
            )


async def record_step(
    record: StepRecord,
    config: ExperimentConfig,
    model: Any,
    wandb: WandbLogger | None,
    queue_counters: dict[str, float],
) -> dict[str, float]:
    """Log the step at the model's step (ART's history and W&B); returns the metrics."""
    results = [r for g in record.batch for r in g.results.values()]
    directory = Path(config.log_dir) / config.experiment_name / f"step_{record.step}"
    write_rlm_logs(results, directory, config.config_hash, config.max_steps)
    metrics = step_metrics(
        record.batch, record.dropped, wait_s=record.wait_s, train_s=record.train_s
    )
    metrics.update(queue_counters)
    metrics["pipeline/groups_trained"] = float(len(record.trained))
    metrics["pipeline/groups_dropped"] = float(sum(record.dropped.values()))
    metrics["pipeline/groups_cancelled"] = float(record.cancelled)
    if record.staleness:
        metrics["pipeline/staleness_mean"] = sum(record.staleness) / len(record.staleness)
        metrics["pipeline/staleness_max"] = float(max(record.staleness))
    metrics.update(record.train_metrics)
    model_step = await model.get_step()
    await model.log(record.trained or None, split="train", metrics=metrics, step=model_step)
    if wandb is not None:
        wandb.log_step(model_step, metrics, record.trained)
    log.info(
        "step %d done: %d groups trained, %d dropped %s, %d cancelled, wait %.1fs, train %.1fs",
        record.step,
        len(record.trained),
        sum(record.dropped.values()),
        dict(record.dropped) or "",
        record.cancelled,
        record.wait_s,
        record.train_s,
    )
    return metrics
