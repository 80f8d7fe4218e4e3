"""The grader killed mid-grading, with the real grader on the Docker engine and the fixture tasks:
the worker's grading fails or is retried against the restarted grader; either way no rollout is
scored 0 for it, and the restarted grader removes the killed one's container."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest

from common.grading import TOKEN_ENV
from tests.conftest import GRADER_TEST_TOKEN, Processes, grader_containers, wait_for
from tests.fakes.agent_scripts import FixingAgent
from tests.fakes.scripted_llm import ScriptedLLM
from tests.faults.invariants import FaultRun, assert_invariants
from trainer.services import free_port

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.slow]


def test_grader_killed_mid_grading(
    fixture_tasks, repo_cache: Path, redis_url: str, tmp_path: Path, processes: Processes
) -> None:
    dataset, _ = fixture_tasks
    port, label = free_port(), f"fault-{free_port()}"
    env = {TOKEN_ENV: GRADER_TEST_TOKEN}

    def start_grader() -> psutil.Process:
        process = processes._spawn(
            [sys.executable, "-m", "grader", "--host", "127.0.0.1", "--port", str(port),
             "--max-concurrent", "2", "--label", label],
            "grader", env,
        )  # fmt: skip
        return psutil.Process(process.pid)

    grader = start_grader()
    with ScriptedLLM(script=FixingAgent()) as llm:
        run = FaultRun(
            redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=240, steps=1,
            overrides={
                "grader": "docker", "docker_url": f"http://127.0.0.1:{port}",
                "reward_fn": "common.rewards:binary_test_reward", "cache_dir": str(repo_cache),
                "dataset_size": 2, "retry_backoff_s": 1.0,
            },
        )  # fmt: skip
        processes.worker(redis_url, "a", env={**os.environ, **env})
        trainer = processes.trainer(run.args())
        wait_for(lambda: grader_containers(label), 120, "a grading container running")
        grader.kill()
        grader.wait(10)
        start_grader()
        [row] = assert_invariants(run, trainer, processes.logs())
    assert "unreachable" in processes.logs(), "the worker met the killed grader"
    dropped = {k for k, v in row.items() if k.startswith("pipeline/groups_dropped/") and v}
    assert dropped <= {"pipeline/groups_dropped/failed_rollout:GraderError"}, row
    wait_for(lambda: not grader_containers(label), 60, "the killed grader's container removed")
