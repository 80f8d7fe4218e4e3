"""README claims about the trainer's dispatch, end to end with real workers: never more than
`--max-concurrent` rollouts in flight, the gateway inside the trainer (`--gateway-port`), and a
job that crashes past its RQ retries (its rollouts count as failed, its group is dropped)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.conftest import Processes, history, train_calls, trainer_args
from tests.fakes.agent_scripts import CRASH_LOG_ENV
from tests.fakes.scripted_llm import ScriptedLLM, finish_at_once
from trainer.gateway import GATEWAY_TOKEN_ENV
from trainer.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_never_more_than_max_concurrent_rollouts_in_flight(
    redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    art_path = tmp_path / "art"
    # Each request takes a while, so rollouts of both groups would overlap if both were
    # dispatched at once (two idle workers are there to take them).
    with ScriptedLLM(delay_s=0.3) as llm:
        for name in ("a", "b"):
            processes.worker(redis_url, name)
        args = trainer_args(redis_url, llm.url, dataset, art_path, max_concurrent=3)
        assert processes.trainer(args).wait(180) == 0, processes.logs()
    assert len(train_calls(art_path)) == 2
    assert llm.max_in_flight == 3, "one group of 3 at a time: each rollout asks in turn"


def test_the_gateway_inside_the_trainer_serves_the_workers(
    redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    art_path = tmp_path / "art"
    port, token = free_port(), uuid.uuid4().hex
    with ScriptedLLM(script=finish_at_once) as llm:
        processes.worker(redis_url, "a")  # the worker does not know the token: jobs carry it
        args = trainer_args(
            redis_url, llm.url, dataset, art_path, gateway_port=port,
            public_policy_url=f"http://127.0.0.1:{port}/v1",
        )  # fmt: skip
        trainer = processes.trainer(args, env={GATEWAY_TOKEN_ENV: token})
        assert trainer.wait(180) == 0, processes.logs()
    assert len(train_calls(art_path)) == 2
    # Every request came through the gateway: with the backend's key, never the workers' token.
    assert llm.authorizations == {"Bearer recording-backend-key"}
    assert {b["model"].rsplit("@", 1)[1] for b in llm.bodies} == {"0", "1"}


def test_a_job_that_crashes_past_its_retries_drops_its_group(
    redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    art_path = tmp_path / "art"
    crashes = tmp_path / "crashes.log"
    with ScriptedLLM() as llm:
        processes.worker(redis_url, "a", env={CRASH_LOG_ENV: str(crashes)})
        args = trainer_args(
            redis_url, llm.url, dataset, art_path, job_retries=1, rollout_reruns=0, dataset_size=2,
            system_prompt_fn="tests.fakes.agent_scripts:crashing_prompt",
        )  # fmt: skip
        trainer = processes.trainer(args)
        assert trainer.wait(180) == 0, processes.logs()
    assert llm.requests == 0
    assert len(crashes.read_text().splitlines()) == 2 * 2, "each of 2 jobs: a run and 1 retry"
    assert train_calls(art_path) == []
    [row] = history(art_path)
    assert row["pipeline/groups_dropped"] == 2
    assert row["pipeline/failed_rollouts"] == 2 * 3, processes.logs()
    reasons = {k: v for k, v in row.items() if k.startswith("pipeline/groups_dropped/")}
    assert sum(reasons.values()) == 2 and len(reasons) == 1, reasons
