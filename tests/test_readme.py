"""The README documents what the code does: its flag table is the config's, and its CPU-only
commands run as written."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for
from tests.readme_flags import flag_table, readme_table
from trainer.services import free_port


def test_readme_flag_table_lists_every_flag_with_its_default() -> None:
    assert readme_table() == flag_table(), (
        "README.md's flag table is out of date: run `uv run python -m tests.readme_flags`"
    )


def _bash_block_after(heading: str) -> list[str]:
    """The commands of the first ```bash block after `heading`, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index(heading) :].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.integration
@pytest.mark.slow
def test_try_the_pipeline_without_a_gpu_runs_as_written(redis_url: str, tmp_path: Path) -> None:
    """The README's CPU-only commands, verbatim but for the interpreter, the port and the Redis
    (given by REDIS_URL: tests never touch the one on 6379), from a fresh directory."""
    serve, train = _bash_block_after("### Try the pipeline without a GPU")
    port = str(free_port())

    def argv(command: str) -> list[str]:
        assert command.startswith("uv run python "), command
        words = shlex.split(command.removeprefix("uv run python ").rstrip("&"))
        return [sys.executable, *(w.replace("8001", port) for w in words)]

    (tmp_path / "tests").symlink_to(ROOT / "tests")  # the block's relative paths
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url}
    llm = subprocess.Popen(argv(serve), cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(int(port)) or llm.poll() is not None, 30, "the scripted LLM")
        result = subprocess.run(
            argv(train), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
        )
    finally:
        llm.kill()
        llm.wait(10)
    assert result.returncode == 0, result.stderr[-3000:]
    calls = tmp_path / ".art/rlm-training/models/r2e-rlm-qwen3-14b-default/train_calls.jsonl"
    steps = [json.loads(line) for line in calls.read_text().splitlines()]
    assert steps and all(len(step["groups"]) == 2 for step in steps)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
