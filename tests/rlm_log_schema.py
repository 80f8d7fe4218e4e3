"""What the RLM visualizer needs of a `.jsonl` trajectory file, and nothing that breaks its loader
(../shared/REFERENCE.md section 4): a metadata line, then only iteration lines; every prompt a
list of messages with string content; every code block's result with stdout, stderr, locals and
a float execution_time; every rlm_call with its execution_time and a usage_summary per model;
no NaN or Infinity anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
MODEL_USAGE_KEYS = {"total_calls", "total_input_tokens", "total_output_tokens"}


def _no_nan(token: str) -> Any:
    raise ValueError(f"{token} in a visualizer log")


def validate_rlm_log(path: Path) -> list[dict[str, Any]]:
    """The file's lines, parsed, after asserting every rule the visualizer's loader relies on."""
    lines = [json.loads(line, parse_constant=_no_nan) for line in path.read_text().splitlines()]
    metadata, iterations = lines[0], lines[1:]
    assert metadata["type"] == "metadata" and metadata.keys() >= METADATA_KEYS, metadata
    assert isinstance(metadata["max_depth"], int) and isinstance(metadata["max_iterations"], int)
    assert {"instance_id", "reward", "step", "config_hash", "status"} <= metadata.keys()
    assert iterations, f"{path} has no iteration"
    for number, line in enumerate(iterations, 1):
        assert line["type"] == "iteration" and line.keys() >= ITERATION_KEYS, line.keys()
        assert line["iteration"] == number
        assert isinstance(line["prompt"], list) and line["prompt"]
        for message in line["prompt"]:
            assert isinstance(message["role"], str) and isinstance(message["content"], str)
        assert isinstance(line["response"], str)
        assert line["final_answer"] is None or isinstance(line["final_answer"], str)
        assert line["iteration_time"] is None or isinstance(line["iteration_time"], float)
        for block in line["code_blocks"]:
            result = block["result"]
            assert isinstance(block["code"], str) and result.keys() >= RESULT_KEYS
            assert isinstance(result["stdout"], str) and isinstance(result["stderr"], str)
            assert isinstance(result["locals"], dict)
            assert isinstance(result["execution_time"], float)
            for call in result["rlm_calls"]:
                assert call.keys() >= CALL_KEYS and isinstance(call["execution_time"], float)
                assert isinstance(call["prompt"], str) and isinstance(call["response"], str)
                summaries = call["usage_summary"]["model_usage_summaries"]
                assert summaries and all(
                    usage.keys() == MODEL_USAGE_KEYS
                    and all(isinstance(n, int) for n in usage.values())
                    for usage in summaries.values()
                ), summaries
    return lines
