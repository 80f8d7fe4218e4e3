"""The REPL agent through the whole queue pipeline: hostile code in a real worker process,
sub-queries kept as additional histories, and visualizer logs in the RLM format."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from common.config import ExperimentConfig
from common.flags import parse_config
from tests.conftest import assert_nothing_left_running, descendants, train_calls, trainer_args
from tests.fakes.agent_scripts import HOSTILE_TURNS, hostile_agent
from tests.fakes.scripted_llm import ScriptedLLM
from tests.rlm_log_schema import validate_rlm_log
from tests.tokenizer import assert_art_trainable
from trainer.loop import run_training

pytestmark = pytest.mark.integration


def test_hostile_agent_through_the_pipeline(
    redis_url: str, dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    art_path, log_dir = tmp_path / "art", tmp_path / "logs"
    children_before = descendants()
    with ScriptedLLM(script=hostile_agent) as llm, caplog.at_level(logging.INFO):
        args = trainer_args(
            redis_url, llm.url, dataset, art_path, local_workers=1, dataset_size=2,
            groups_per_step=1, rollouts_per_group=2, max_concurrent=2,
            max_steps=len(HOSTILE_TURNS), log_sample_rate=1.0, log_dir=str(log_dir),
            experiment_name="hostile", code_timeout_s=20,
        )  # fmt: skip
        asyncio.run(run_training(parse_config(args, ExperimentConfig, "t")))

    assert "local worker" not in caplog.text, "a worker died"
    calls = train_calls(art_path, "hostile")
    assert len(calls) == 2
    for call in calls:
        [group] = call["groups"]
        assert group["size"] == 2
        assert group["rewards"] == [1.0, 1.0]  # every rollout got to finish()
        assert group["additional_histories"] == [1, 1]  # the llm_query conversation
        assert all(m["sub_queries"] == 1 and m["repl_restarts"] >= 1 for m in group["metrics"])
    assert_art_trainable([group["trainable"] for call in calls for group in call["groups"]])
    files = sorted(log_dir.glob("hostile/step_*/*.jsonl"))
    assert len(files) == 4 and {f.parent.name for f in files} == {"step_0", "step_1"}
    for path in files:
        lines = validate_rlm_log(path)
        assert lines[0]["reward"] == 1.0 and lines[0]["step"] in (0, 1)
        assert lines[0]["max_depth"] == 2 and lines[0]["status"] == "ok"
        [call] = lines[1]["code_blocks"][0]["result"]["rlm_calls"]
        assert call["prompt"] == "How do I list files?" and call["response"] == "Use list_files()."
        shadow = lines[4]["code_blocks"][0]["result"]  # an error: shown as one, on stderr
        assert "No such file or directory" in shadow["stderr"] and shadow["stdout"] == ""
    assert_nothing_left_running(children_before, "the trainer returned")
