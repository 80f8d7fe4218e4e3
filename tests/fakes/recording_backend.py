"""A CPU stand-in for the GPU trainer: an `art.Backend` that records each `train()` call.

Checkpoints are real folders (`checkpoints/0001`, ...) so ART's own `get_step`, `log`,
`merge_state` and `read_state` run unchanged. Every call is appended to `train_calls.jsonl`
beside the model, so a test can check what reached training from another process.
Select it with `--backend tests.fakes.recording_backend:create`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import art
from art.types import TrainResult
from art.utils.get_model_step import get_step_from_dir
from art.utils.output_dirs import get_model_dir

from common.config import ExperimentConfig
from trainer.trajectories import is_trainable

CRASH_AFTER_TRAIN_ENV = "RECORDING_BACKEND_CRASH_AFTER_TRAIN"  # simulate a crash before checkpoint


class RecordingBackend(art.Backend):
    def __init__(self, path: str, endpoint: str) -> None:
        self.path = path
        self.endpoint = endpoint

    def _model_inference_name(self, model: Any, step: int | None = None) -> str:
        return f"{model.name}@{step if step is not None else self._step(model)}"

    async def close(self) -> None:
        return None

    async def register(self, model: Any) -> None:
        model.base_path = self.path
        os.makedirs(get_model_dir(model=model, art_path=self.path), exist_ok=True)

    async def _get_step(self, model: Any) -> int:
        return self._step(model)

    async def _delete_checkpoint_files(self, model: Any, steps_to_keep: list[int]) -> None:
        return None

    async def _prepare_backend_for_training(self, model: Any, config: Any) -> tuple[str, str]:
        return self.endpoint, "recording-backend-key"

    async def train(
        self, model: Any, trajectory_groups: Iterable[art.TrajectoryGroup], **kwargs: Any
    ) -> TrainResult:
        groups = list(trajectory_groups)
        model_dir = Path(get_model_dir(model=model, art_path=self.path))
        new_step = self._step(model) + 1
        record = {
            "step": new_step,
            "kwargs": kwargs,
            "groups": [
                {
                    "type": type(group).__name__,
                    "instance_ids": sorted(
                        {str(t.metadata.get("instance_id")) for t in group.trajectories}
                    ),
                    "size": len(group.trajectories),
                    "trainable": [is_trainable(t) for t in group.trajectories],
                    "rewards": [t.reward for t in group.trajectories],
                    "policy_versions": [t.initial_policy_version for t in group.trajectories],
                    "additional_histories": [
                        len(t.additional_histories) for t in group.trajectories
                    ],
                    "metrics": [dict(t.metrics) for t in group.trajectories],
                }
                for group in groups
            ],
        }
        with open(model_dir / "train_calls.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        (model_dir / "checkpoints" / f"{new_step:04d}").mkdir(parents=True, exist_ok=True)
        if os.environ.get(CRASH_AFTER_TRAIN_ENV) == str(new_step):
            os._exit(137)
        rewards = [t.reward for g in groups for t in g.trajectories]
        return TrainResult(
            step=new_step, metrics={"loss": 0.0, "num_trajectories": float(len(rewards))}
        )

    def _train_sft(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the recording backend records RL steps only")

    def _step(self, model: Any) -> int:
        return get_step_from_dir(get_model_dir(model=model, art_path=self.path))


def create(config: ExperimentConfig) -> RecordingBackend:
    return RecordingBackend(path=config.art_path, endpoint=config.vllm_url)
