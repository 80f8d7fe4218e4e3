"""Periodic evaluation through the real pipeline: held-out scenarios on their own queue, served by
the same workers, logged with split="val" at their policy's step, never trained, and never
holding up a training step."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from common.config import ExperimentConfig
from common.flags import parse_config
from tests.conftest import history, train_calls, trainer_args, wait_for
from tests.dataset import r2e_row, write_r2e_jsonl
from tests.fakes.scripted_llm import ScriptedLLM
from trainer.loop import run_training

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HELD_OUT = "Held-out task"


def _dataset(directory: Path) -> Path:
    """A local dataset with a file per split: train (4 scenarios) and dev (2 held out)."""
    directory.mkdir()
    write_r2e_jsonl(directory / "train.jsonl", rows=4)
    with open(directory / "dev.jsonl", "w") as handle:
        for index in range(2):
            row = r2e_row(index, repo="devrepo")
            row["problem_statement"] = f"[ISSUE]\n{HELD_OUT} {index}: fix `sub()`.\n[/ISSUE]"
            handle.write(json.dumps(row) + "\n")
    return directory


def _is_evaluation(body: dict[str, Any]) -> bool:
    return HELD_OUT in json.dumps(body["messages"])


def _evaluates_the_base_model(body: dict[str, Any]) -> bool:
    return _is_evaluation(body) and body["model"].endswith("@0")


def test_evaluation_runs_beside_training_is_logged_and_never_trained(
    redis_url: str, tmp_path: Path
) -> None:
    art_path = tmp_path / "art"
    # The base model's evaluation is held (its two groups keep two workers busy throughout).
    with ScriptedLLM(delay_s=0.02, hold_when=_evaluates_the_base_model) as llm:
        args = trainer_args(
            redis_url, llm.url, _dataset(tmp_path / "data"), art_path, local_workers=3,
            max_steps_off_policy=1, eval_every=1, eval_split="dev", eval_size=2,
            eval_rollouts=2, rollouts_per_group=2, max_concurrent=4,
        )  # fmt: skip
        config = parse_config(args, ExperimentConfig, "trainer")
        errors: list[BaseException] = []

        def train() -> None:
            try:
                asyncio.run(run_training(config))
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        trainer = threading.Thread(target=train)
        trainer.start()
        # Training runs its two steps to the end while that evaluation is still under way.
        wait_for(lambda: len(train_calls(art_path)) == 2 or errors, 120, "both steps trained")
        assert not errors, errors
        assert llm.held >= 1, "the base model's evaluation was under way during training"
        assert trainer.is_alive(), "the trainer waits for the evaluations still running"
        llm.release()
        trainer.join(120)
        assert not trainer.is_alive() and not errors, errors

    evaluated = [body["model"] for body in llm.bodies if _is_evaluation(body)]
    name = config.art_model_name
    assert {f"{name}@0", f"{name}@1", f"{name}@2"} <= set(evaluated), "each policy, pinned"
    val = [row for row in history(art_path) if "val/reward" in row]
    assert sorted(row["step"] for row in val) == [0, 1, 2]
    assert all(row["val/eval/groups"] == 2 for row in val), val
    trained = [i for c in train_calls(art_path) for g in c["groups"] for i in g["instance_ids"]]
    assert trained and not any(i.startswith("devrepo") for i in trained), "never trained"
