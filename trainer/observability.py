"""W&B for a run. With WANDB_API_KEY, ART logs `model.log(...)` online and we add the full config
and `config_hash` to the run; without one, the same figures go to an offline run of our own
(`wandb sync <dir>` uploads it later); `--no-wandb` turns W&B off.

One W&B run per experiment, named after its ART model (`<model_name>-<experiment_name>`) and
grouped by `--model-name`, so a model's experiments compare side by side. Online, ART's run id
is the ART model name (a restart resumes it); offline, the run key (new with every fresh start).
"""

from __future__ import annotations

import logging
import os
from statistics import fmean
from typing import Any

import art

from common.config import ExperimentConfig

log = logging.getLogger(__name__)


class WandbLogger:
    def __init__(self, config: ExperimentConfig, model: art.TrainableModel, run_key: str) -> None:
        self._offline: Any = None
        if not config.wandb:
            os.environ["WANDB_MODE"] = "disabled"
            return
        run_config = {**config.redacted_dump(), "config_hash": config.config_hash}
        # ART's own wandb.init has no group argument: W&B reads it from the environment.
        os.environ["WANDB_RUN_GROUP"] = config.model_name
        if not os.environ.get("WANDB_API_KEY"):
            # An empty key (say, `WANDB_API_KEY=` in .env) is no key: ART would try it online.
            os.environ.pop("WANDB_API_KEY", None)
        if "WANDB_API_KEY" in os.environ:
            try:
                model.update_wandb_config(run_config)
            except ValueError as exc:  # W&B configs are immutable once set
                log.warning(
                    "W&B config not updated (%s): the resumed run keeps its first config", exc
                )
            return
        import wandb

        directory = config.model_dir
        directory.mkdir(parents=True, exist_ok=True)
        self._offline = wandb.init(
            project=config.project,
            group=config.model_name,
            name=config.art_model_name,
            id=run_key,
            dir=str(directory),
            mode="offline",
            config=run_config,
            resume="allow",
        )
        log.info("W&B offline (no WANDB_API_KEY): `wandb sync %s/wandb` uploads the run", directory)

    def log_step(
        self,
        step: int,
        metrics: dict[str, float],
        groups: list[art.TrajectoryGroup],
        split: str = "train",
    ) -> None:
        """Offline only: online, `model.log` has already sent these."""
        if self._offline is None:
            return
        trajectories = [t for group in groups for t in group.trajectories]
        summary = dict(metrics)
        if trajectories:
            summary[f"{split}/reward"] = fmean(t.reward for t in trajectories)
            for key in ("success", "finished", "steps", "prompt_tokens", "completion_tokens"):
                values = [float(t.metrics[key]) for t in trajectories if key in t.metrics]
                if values:
                    summary[f"{split}/{key}"] = fmean(values)
        self._offline.log({**summary, "training_step": step})

    def close(self) -> None:
        if self._offline is not None:
            import wandb

            self._offline.finish()
            wandb.teardown()  # stops wandb's service process: nothing outlives the trainer
