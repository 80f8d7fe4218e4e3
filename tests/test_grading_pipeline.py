"""The data and grading side together: repo cache, deployment validation, and training steps
whose rewards come from the hidden tests run by the real grader."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from common.config import ExperimentConfig
from common.flags import parse_config
from common.grading import TOKEN_ENV
from common.repo_cache import read_index
from producer.repo_cache import fill_cache
from tests.conftest import GRADER_TEST_TOKEN, ROOT, history, train_calls, trainer_args
from tests.fakes.agent_scripts import FixingAgent
from tests.fakes.scripted_llm import ScriptedLLM
from trainer.loop import run_training

pytestmark = [pytest.mark.docker, pytest.mark.integration]


def test_repo_cache_holds_the_buggy_code_and_no_way_to_the_fix(
    fixture_tasks, repo_cache: Path
) -> None:
    _, tasks = fixture_tasks
    index = read_index(repo_cache)
    assert len(index) == len(tasks)
    calc = next(entry for key, entry in index.items() if key.startswith("calc__"))
    repo = repo_cache / calc["path"]
    assert "return a - b" in (repo / "calc" / "ops.py").read_text()  # the buggy commit
    leftovers = [
        p.name for p in repo.rglob("*") if p.name in {".git", ".venv", "r2e_tests", "run_tests.sh"}
    ]
    assert leftovers == []
    before = (repo_cache / "index.json").read_text()
    fill_cache(str(fixture_tasks[0]), "train", repo_cache)  # a second run copies nothing again
    assert (repo_cache / "index.json").read_text() == before


def test_validation_passes_good_tasks_and_names_a_broken_one(
    fixture_tasks, grader_service, tmp_path: Path
) -> None:
    dataset, _ = fixture_tasks
    rows = datasets.Dataset.from_parquet(str(dataset)).to_list()
    broken = dict(rows[1])
    expected = json.loads(broken["expected_output_json"])
    broken["expected_output_json"] = json.dumps({**expected, "test_translit": "PASSED"})
    broken["commit_hash"] = "f" * 40
    path = tmp_path / "with-broken.parquet"
    datasets.Dataset.from_list([*rows, broken]).to_parquet(path)
    result = subprocess.run(
        [sys.executable, "-m", "grader.validate", "--dataset", str(path),
         "--docker-url", grader_service],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, TOKEN_ENV: GRADER_TEST_TOKEN},
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout + result.stderr
    assert sum("| ok |" in line for line in lines) == len(rows)
    bad = next(line for line in lines if "ffffffffffff" in line)
    assert "| broken |" in bad and "test_translit" in bad
    assert "3 ok, 1 not ok" in result.stdout


def test_rewards_come_from_the_hidden_tests(
    fixture_tasks, repo_cache: Path, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-machine command: the grader (with a token of its own) and the workers are started
    by the trainer."""
    dataset, tasks = fixture_tasks
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    art_path = tmp_path / "art"
    with ScriptedLLM(script=FixingAgent()) as llm:
        args = trainer_args(
            redis_url, llm.url, dataset, art_path,
            grader="docker", reward_fn="common.rewards:binary_test_reward",
            local_grader=True, cache_dir=str(repo_cache), local_workers=2,
            dataset_size=len(tasks), groups_per_step=len(tasks), rollouts_per_group=4,
            max_concurrent=8,
        )  # fmt: skip
        asyncio.run(run_training(parse_config(args, ExperimentConfig, "t")))

    [call] = train_calls(art_path)
    assert len(call["groups"]) == len(tasks)
    for group in call["groups"]:
        # Even conversations apply the right fix, odd ones a wrong one.
        assert sorted(group["rewards"]) == [0.0, 0.0, 1.0, 1.0], group
    # Graded, none tampering: the step says so (reward hacking would show here first).
    assert history(art_path)[-1]["reward/tamper_rate"] == 0.0
