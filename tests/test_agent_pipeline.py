"""The REPL agent through the whole queue pipeline: hostile code in a real worker process,
sub-queries kept as additional histories, and visualizer logs in the RLM format."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import psutil
import pytest

from common.config import ExperimentConfig, parse_config
from tests.conftest import train_calls, trainer_args
from tests.fakes.agent_scripts import HOSTILE_TURNS, hostile_agent
from tests.fakes.scripted_llm import ScriptedLLM
from trainer.loop import run_training

pytestmark = pytest.mark.integration

METADATA_KEYS = {
    "type", "timestamp", "root_model", "max_depth", "max_iterations", "backend",
    "backend_kwargs", "environment_type", "environment_kwargs", "other_backends",
}  # fmt: skip
ITERATION_KEYS = {
    "type", "iteration", "timestamp", "prompt", "response", "code_blocks", "final_answer",
    "iteration_time",
}  # fmt: skip
RESULT_KEYS = {"stdout", "stderr", "locals", "execution_time", "rlm_calls", "final_answer"}
CALL_KEYS = {
    "root_model", "prompt", "response", "usage_summary", "execution_time", "prompt_tokens",
    "completion_tokens",
}  # fmt: skip


def _no_nan(token: str) -> Any:
    raise ValueError(f"{token} in a visualizer log")


def validate_rlm_log(path: Path) -> list[dict[str, Any]]:
    """Everything the RLM visualizer needs, and nothing that breaks its loader."""
    lines = [json.loads(line, parse_constant=_no_nan) for line in path.read_text().splitlines()]
    metadata, iterations = lines[0], lines[1:]
    assert metadata["type"] == "metadata" and metadata.keys() >= METADATA_KEYS
    assert {"instance_id", "reward", "step", "config_hash"} <= metadata.keys()
    assert iterations, f"{path} has no iteration"
    for number, line in enumerate(iterations, 1):
        assert line["type"] == "iteration" and line.keys() >= ITERATION_KEYS
        assert line["iteration"] == number
        assert isinstance(line["prompt"], list) and line["prompt"]
        assert all(isinstance(m["content"], str) and m["role"] for m in line["prompt"])
        assert isinstance(line["response"], str)
        assert line["final_answer"] is None or isinstance(line["final_answer"], str)
        for block in line["code_blocks"]:
            assert isinstance(block["code"], str) and block["result"].keys() >= RESULT_KEYS
            assert isinstance(block["result"]["execution_time"], float)
            for call in block["result"]["rlm_calls"]:
                assert call.keys() >= CALL_KEYS and isinstance(call["execution_time"], float)
    return lines


def test_hostile_agent_through_the_pipeline(
    redis_url: str, dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    art_path, log_dir = tmp_path / "art", tmp_path / "logs"
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    with ScriptedLLM(script=hostile_agent) as llm, caplog.at_level(logging.INFO):
        args = trainer_args(
            redis_url, llm.url, dataset, art_path, local_workers=1, dataset_size=2,
            groups_per_step=1, rollouts_per_group=2, max_concurrent=2,
            max_steps=len(HOSTILE_TURNS), log_sample_rate=1.0, log_dir=str(log_dir),
            experiment_name="hostile", code_timeout_s=20,
        )  # fmt: skip
        asyncio.run(run_training(parse_config(args, ExperimentConfig, "t")))

    assert "local worker" not in caplog.text, "a worker died"
    calls = train_calls(art_path)
    assert len(calls) == 2
    for call in calls:
        [group] = call["groups"]
        assert group["size"] == 2 and all(group["trainable"])
        assert group["rewards"] == [1.0, 1.0]  # every rollout got to finish()
        assert group["additional_histories"] == [1, 1]  # the llm_query conversation
        assert all(m["sub_queries"] == 1 and m["repl_restarts"] >= 1 for m in group["metrics"])
    files = sorted(log_dir.glob("hostile/step_*/*.jsonl"))
    assert len(files) == 4 and {f.parent.name for f in files} == {"step_0", "step_1"}
    for path in files:
        lines = validate_rlm_log(path)
        assert lines[0]["reward"] == 1.0 and lines[0]["step"] in (0, 1)
        [call] = lines[1]["code_blocks"][0]["result"]["rlm_calls"]
        assert call["prompt"] == "How do I list files?" and call["response"] == "Use list_files()."
        shadow = lines[4]["code_blocks"][0]["result"]["stdout"]
        assert "No such file or directory" in shadow
    left = {p.pid for p in psutil.Process().children(recursive=True)} - children_before
    assert not left, f"processes left running: {left}"
