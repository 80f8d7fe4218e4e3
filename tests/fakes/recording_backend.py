"""A CPU stand-in for the GPU trainer: an `art.Backend` that records each `train()` call.

Checkpoints are real folders (`checkpoints/0001`, ...) so ART's own `get_step`, `log`,
`merge_state` and `read_state` run unchanged. Every call is appended to `train_calls.jsonl`
beside the model, so a test can check what reached training from another process.
Select it with `--backend tests.fakes.recording_backend:create`.

`train()` is bound to the signature of ART's own `LocalBackend.train` (read from ART's source with
`ast`: `art.local` imports torch), so an argument LocalBackend does not take, or a misspelled one,
fails as it would on the GPU. With `RECORDING_BACKEND_TOKENIZE=1` each group goes through ART's
`tokenize_trajectory_groups` on CPU with the tests' small tokenizer, and each trajectory's number
of trained tokens is recorded (`trainable_tokens`; `trainable` is that number > 0): ART's judgement
of trainability, not ours. Without it (no torch) both are recorded as None.

For benchmarks, `RECORDING_BACKEND_TRAIN_S=1.5` makes each `train()` take that long (an
`asyncio.sleep`, so the trainer's event loop keeps running, as it does while a GPU trains);
every record carries the call's `started_at` and `finished_at` (`time.time()`).
"""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any

import art
from art.types import TrainResult
from art.utils.get_model_step import get_step_from_dir
from art.utils.output_dirs import get_model_dir

from common.config import ExperimentConfig

CRASH_AFTER_TRAIN_ENV = "RECORDING_BACKEND_CRASH_AFTER_TRAIN"  # simulate a crash before checkpoint
TOKENIZE_ENV = "RECORDING_BACKEND_TOKENIZE"  # "1": judge trainability with ART's tokenizer path
TRAIN_S_ENV = "RECORDING_BACKEND_TRAIN_S"  # seconds each train() takes (simulated GPU time)


@functools.cache
def local_backend_train_signature() -> inspect.Signature:
    """`art.local.LocalBackend.train`'s signature, parsed from ART's installed source."""
    source = Path(art.__file__).parent / "local" / "backend.py"
    tree = ast.parse(source.read_text())
    [backend] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LocalBackend"]
    [train] = [n for n in backend.body if isinstance(n, ast.AsyncFunctionDef) and n.name == "train"]
    arguments = train.args
    parameters: list[inspect.Parameter] = []
    positional = arguments.posonlyargs + arguments.args
    defaults = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
    for index, (arg, default) in enumerate(zip(positional, defaults, strict=True)):
        kind = (
            inspect.Parameter.POSITIONAL_ONLY
            if index < len(arguments.posonlyargs)
            else inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        parameters.append(inspect.Parameter(arg.arg, kind, default=_default(default)))
    if arguments.vararg is not None:
        parameters.append(inspect.Parameter(arguments.vararg.arg, inspect.Parameter.VAR_POSITIONAL))
    for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True):
        parameters.append(
            inspect.Parameter(arg.arg, inspect.Parameter.KEYWORD_ONLY, default=_default(default))
        )
    if arguments.kwarg is not None:
        parameters.append(inspect.Parameter(arguments.kwarg.arg, inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(parameters)


def _default(node: ast.expr | None) -> Any:
    if node is None:
        return inspect.Parameter.empty
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)  # not a literal: its source text stands for it


@functools.cache
def _tokenizer() -> Any:
    from tests.tokenizer import build_tokenizer, default_corpus

    return build_tokenizer(default_corpus())


def trained_tokens(groups: list[art.TrajectoryGroup], scale_rewards: bool) -> list[list[int]]:
    """Per group, per trajectory: the tokens ART's `tokenize_trajectory_groups` would train
    (assistant-masked tokens over its history and additional histories)."""
    from art.preprocessing.tokenize import tokenize_trajectory_groups

    counts = [[0] * len(group.trajectories) for group in groups]
    where = {id(t): (g, i) for g, group in enumerate(groups) for i, t in enumerate(group)}
    for result in tokenize_trajectory_groups(
        _tokenizer(), groups, allow_training_without_logprobs=False, scale_rewards=scale_rewards,
        shuffle_group_trajectories=False, drop_zero_advantage_trajectories=False,
    ):  # fmt: skip
        g, i = where[id(result.trajectory)]
        counts[g][i] += sum(result.assistant_mask)
    return counts


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

    async def train(self, *args: Any, **kwargs: Any) -> TrainResult:
        started_at = time.time()
        bound = local_backend_train_signature().bind(self, *args, **kwargs)  # TypeError: unknown
        arguments = dict(bound.arguments)
        arguments.pop("self")
        model = arguments.pop("model")
        groups: list[art.TrajectoryGroup] = list(arguments.pop("trajectory_groups"))
        assert all(isinstance(g, art.TrajectoryGroup) for g in groups), groups
        bound.apply_defaults()
        tokens: list[list[int]] | list[None] = [None] * len(groups)
        if os.environ.get(TOKENIZE_ENV) == "1":
            tokens = trained_tokens(groups, bool(bound.arguments["scale_rewards"]))
        model_dir = Path(get_model_dir(model=model, art_path=self.path))
        new_step = self._step(model) + 1
        train_s = float(os.environ.get(TRAIN_S_ENV) or 0)
        if train_s > 0:
            await asyncio.sleep(train_s)
        record = {
            "step": new_step,
            "started_at": started_at,
            "finished_at": time.time(),
            "kwargs": arguments,
            "groups": [
                {
                    "type": type(group).__name__,
                    "instance_ids": sorted(
                        {str(t.metadata.get("instance_id")) for t in group.trajectories}
                    ),
                    "size": len(group.trajectories),
                    "trainable_tokens": counts,
                    "trainable": None if counts is None else [n > 0 for n in counts],
                    "rewards": [t.reward for t in group.trajectories],
                    "policy_versions": [t.initial_policy_version for t in group.trajectories],
                    "additional_histories": [
                        len(t.additional_histories) for t in group.trajectories
                    ],
                    "metrics": [dict(t.metrics) for t in group.trajectories],
                }
                for group, counts in zip(groups, tokens, strict=True)
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


# What `inspect.signature(backend.train)` reports (the trainer reads it to choose its kwargs):
# LocalBackend's, so the stand-in is offered exactly what the GPU backend would be.
RecordingBackend.train.__signature__ = local_backend_train_signature()  # type: ignore[attr-defined]
