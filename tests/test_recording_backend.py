"""The recording backend stands in for ART's LocalBackend at its interface: `train()` takes exactly
LocalBackend's arguments (read from ART's source), and trainability is ART's own judgement."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import art
import pytest
from openai.types.chat.chat_completion import Choice

from tests.fakes.recording_backend import (
    TOKENIZE_ENV,
    RecordingBackend,
    local_backend_train_signature,
)
from tests.fakes.scripted_llm import FINISH, completion
from tests.tokenizer import require_torch


def _trajectory(reward: float, logprobs: bool = True) -> art.Trajectory:
    choice = completion("m@0", FINISH, 10, logprobs=logprobs)["choices"][0]
    return art.Trajectory(
        messages_and_choices=[
            {"role": "system", "content": "You fix bugs."},
            {"role": "user", "content": "Fix calc.add."},
            Choice.model_validate(choice),
        ],
        reward=reward,
    )


def _train(tmp_path: Path, groups: list[art.TrajectoryGroup], **kwargs: Any) -> dict[str, Any]:
    import json

    async def run() -> None:
        backend = RecordingBackend(str(tmp_path), "http://127.0.0.1:1/v1")
        model = art.TrainableModel(name="m", project="p", base_model="b")
        await model.register(backend)
        await backend.train(model, groups, **kwargs)

    asyncio.run(run())
    [path] = tmp_path.rglob("train_calls.jsonl")
    return json.loads(path.read_text().splitlines()[-1])


def test_the_signature_is_local_backends() -> None:
    signature = local_backend_train_signature()
    names = list(signature.parameters)
    assert names[:3] == ["self", "model", "trajectory_groups"]
    assert {"learning_rate", "advantage_balance", "scale_rewards", "loss_fn"} <= set(names)
    assert signature.parameters["learning_rate"].default == 5e-6
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    # The trainer reads the backend's signature to choose what it passes: LocalBackend's.
    backend = RecordingBackend("/nonexistent", "http://127.0.0.1:1/v1")
    assert list(inspect.signature(backend.train).parameters) == names[1:]


@pytest.mark.parametrize(
    "kwargs",
    [{"learning_rate": 1e-5, "scale_reward": False}, {"lr": 1e-5}, {"ppo": True}],
    ids=["misspelled", "unknown", "serverless-only"],
)
def test_an_argument_local_backend_does_not_take_fails(tmp_path: Path, kwargs: dict) -> None:
    group = art.TrajectoryGroup([_trajectory(0.0), _trajectory(1.0)])
    with pytest.raises(TypeError):
        _train(tmp_path, [group], **kwargs)


def test_arguments_local_backend_takes_are_recorded(tmp_path: Path) -> None:
    group = art.TrajectoryGroup([_trajectory(0.0), _trajectory(1.0)])
    call = _train(tmp_path, [group], learning_rate=1e-5, scale_rewards=False, loss_fn="ppo")
    assert call["kwargs"] == {"learning_rate": 1e-5, "scale_rewards": False, "loss_fn": "ppo"}
    assert call["groups"][0]["rewards"] == [0.0, 1.0]


@pytest.mark.tokenizer
def test_trainability_is_arts_judgement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_torch()
    monkeypatch.setenv(TOKENIZE_ENV, "1")
    trainable = art.TrajectoryGroup([_trajectory(0.0), _trajectory(1.0)])
    # Equal rewards: ART drops them by default, yet each would train when advantages differ.
    uniform = art.TrajectoryGroup([_trajectory(1.0), _trajectory(1.0)])
    no_logprobs = art.TrajectoryGroup([_trajectory(0.0), _trajectory(1.0, logprobs=False)])
    call = _train(tmp_path, [trainable, uniform, no_logprobs])
    tokens = len(completion("m@0", FINISH, 10)["choices"][0]["logprobs"]["content"])
    assert [g["trainable_tokens"] for g in call["groups"]] == [
        [tokens, tokens], [tokens, tokens], [tokens, 0],
    ]  # fmt: skip
    assert [g["trainable"] for g in call["groups"]] == [[True, True], [True, True], [True, False]]


def test_without_tokenizing_trainability_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKENIZE_ENV, raising=False)
    call = _train(tmp_path, [art.TrajectoryGroup([_trajectory(0.0), _trajectory(1.0)])])
    assert call["groups"][0]["trainable"] is None
