"""The walkthrough's commands as written: `train.py` with its flags, and a wrapper script that
customises the prompt and reward in code (`examples/`), run with the stand-ins."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from common.grading import TOKEN_ENV
from common.prompts import r2e_cot_system_prompt
from tests.conftest import ROOT, model_dir, train_calls, trainer_args
from tests.fakes.agent_scripts import FixingAgent
from tests.fakes.scripted_llm import ScriptedLLM

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_train_py_runs_the_walkthrough_command(
    redis_url: str, dataset: Path, tmp_path: Path
) -> None:
    art_path = tmp_path / "art"
    with ScriptedLLM() as llm:
        args = trainer_args(redis_url, llm.url, dataset, art_path, local_workers=1)
        result = subprocess.run(
            [sys.executable, "train.py", *args, "--experiment-name", "longer_context",
             "--max-steps", "25", "--max-context-tokens", "32000", "--log-sample-rate", "0.1"],
            cwd=ROOT, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(train_calls(art_path, "longer_context")) == 2  # 4 scenarios, 2 groups per step
    written = json.loads(
        (model_dir(art_path, "longer_context") / "pipeline_config.json").read_text()
    )
    assert (written["experiment_name"], written["max_steps"]) == ("longer_context", 25)
    assert written["max_context_tokens"] == 32000


class _RecordingFixingAgent(FixingAgent):
    """The fixing agent, keeping every system prompt it was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.system_prompts: set[str] = set()

    def __call__(self, messages: list[dict[str, Any]], rng: random.Random) -> str:
        self.system_prompts.add(str(messages[0]["content"]))
        return super().__call__(messages, rng)


@pytest.mark.docker
def test_example_wrapper_sets_prompt_and_reward_in_code(
    fixture_tasks, repo_cache: Path, redis_url: str, tmp_path: Path
) -> None:
    dataset, tasks = fixture_tasks
    art_path = tmp_path / "art"
    agent = _RecordingFixingAgent()
    with ScriptedLLM(script=agent) as llm:
        args = trainer_args(
            redis_url, llm.url, dataset, art_path, grader="docker", local_grader=True,
            cache_dir=str(repo_cache), local_workers=2, dataset_size=len(tasks),
            groups_per_step=len(tasks), rollouts_per_group=2, max_concurrent=4,
        )  # fmt: skip
        args.remove("--reward-fn")
        args.remove("common.rewards:finished_reward")
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        result = subprocess.run(
            [sys.executable, "examples/cot_prompt_experiment.py", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=280, env=env,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert agent.system_prompts == {r2e_cot_system_prompt()}
    written = json.loads((model_dir(art_path) / "pipeline_config.json").read_text())
    assert written["reward_fn"] == "common.rewards:partial_test_reward"
    assert written["system_prompt_fn"] == "common.prompts:r2e_cot_system_prompt"
    [call] = train_calls(art_path)
    rewards = [reward for group in call["groups"] for reward in group["rewards"]]
    assert len(rewards) == 2 * len(tasks) and all(0.0 <= r <= 1.0 for r in rewards)
    assert 1.0 in rewards  # the right fix pays in full
