"""Visualizer logs show what happened: real rollouts (sandboxed REPL, scripted policy) posted by
the worker's own code path, written by the trainer's writer, each file checked against the RLM
visualizer's schema: a rollout with a sub-agent and an error, and a rollout that failed."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from redis import Redis

from common.rewards import finished_reward
from common.wire import RolloutJob, RolloutResult
from rollout_workers import job as job_module
from rollout_workers.policy import PolicyClient
from rollout_workers.sub_agents import MAX_DEPTH
from tests.fakes.agent_scripts import is_sub_agent
from tests.fakes.scripted_llm import ScriptedLLM
from tests.jobs import rollout_job
from tests.rlm_log_schema import validate_rlm_log
from trainer.rlm_logs import write_rlm_logs

ASK_THEN_FAIL = (
    "Let me ask, then try something that fails.\n```repl\n"
    "hint = llm_query('Where is the bug?')\nprint(hint)\nprint('before the error')\n"
    "import subprocess, sys\nsys.stderr.write('first warning\\n')\n"
    "subprocess.run(['sh', '-c', 'echo from-child; echo child-warning >&2'])\n"
    "1 / 0\n```"
)
FINISH = "Done.\n```repl\nfinish('fixed')\n```"
OUTAGE = "POLICY-OUTAGE-NEXT"  # printed by the code: the next request carries it and gets a 503


def _job(endpoint: str) -> RolloutJob:
    return rollout_job(endpoint, rollouts_per_group=2, max_output_chars=4000, log_sample_rate=1.0)


def _post(redis_url: str, script: Any, index: int, fail_when: str | None = None) -> RolloutResult:
    with ScriptedLLM(script=script, fail_when=fail_when) as llm:
        job = _job(llm.url)

        async def attempt() -> RolloutResult:
            client = PolicyClient(job.policy, job.limits)
            try:
                return await job_module._rollout_and_post(
                    Redis.from_url(redis_url), job, index, client, None, "system", finished_reward
                )
            finally:
                await client.aclose()

        return asyncio.run(attempt())


def _ask_then_finish(messages: list[dict[str, Any]], rng: random.Random) -> str:
    if is_sub_agent(messages):
        return "In calc/ops.py, line 2."
    turn = sum(m["role"] == "assistant" for m in messages)
    return ASK_THEN_FAIL if turn == 0 else FINISH


def _outage_after_one_turn(messages: list[dict[str, Any]], rng: random.Random) -> str:
    return f"Looking.\n```repl\nprint('{OUTAGE}')\n```"


def test_logs_of_a_rollout_and_a_failed_rollout_load_in_the_visualizer(
    redis_url: str, tmp_path: Path
) -> None:
    ok = _post(redis_url, _ask_then_finish, 0)
    failed = _post(redis_url, _outage_after_one_turn, 1, fail_when=OUTAGE)
    assert ok.status == "ok" and failed.status == "failed"
    assert failed.error is not None and failed.error.type == "EndpointError"
    assert failed.rlm_log and len(failed.rlm_log) == 1  # the turn it did play

    assert write_rlm_logs([ok, failed], tmp_path, "cfg-1234", max_steps=4) == 2

    lines = validate_rlm_log(tmp_path / f"{ok.rollout_id}.jsonl")
    metadata, first, last = lines[0], lines[1], lines[-1]
    assert metadata["max_depth"] == MAX_DEPTH == 2  # sub-agents ask sub-agents
    assert metadata["status"] == "ok" and metadata["reward"] == 1.0 and "error" not in metadata
    assert metadata["config_hash"] == "cfg-1234" and metadata["root_model"] == "m@0"
    [block] = first["code_blocks"]
    # Output and errors apart, each in the order it was written (prints, child processes).
    stdout, stderr = block["result"]["stdout"], block["result"]["stderr"]
    assert stdout.splitlines() == ["In calc/ops.py, line 2.", "before the error", "from-child"]
    assert stderr.index("first warning") < stderr.index("child-warning")
    assert stderr.index("child-warning") < stderr.index("ZeroDivisionError")
    assert "Traceback" not in stdout
    [call] = block["result"]["rlm_calls"]
    assert call["prompt"] == "Where is the bug?" and call["response"] == "In calc/ops.py, line 2."
    [usage] = call["usage_summary"]["model_usage_summaries"].values()
    assert usage["total_calls"] == 1 and usage["total_input_tokens"] == call["prompt_tokens"] > 0
    assert usage["total_output_tokens"] == call["completion_tokens"] > 0
    assert last["final_answer"] == "fixed"
    # The model saw both streams, output first.
    assert "before the error" in lines[2]["prompt"][-1]["content"]
    assert "ZeroDivisionError" in lines[2]["prompt"][-1]["content"]

    lines = validate_rlm_log(tmp_path / f"{failed.rollout_id}.jsonl")
    metadata = lines[0]
    assert metadata["status"] == "failed" and metadata["reward"] is None
    assert metadata["error"].startswith("EndpointError: ") and "503" in metadata["error"]
    assert len(lines) == 2 and OUTAGE in lines[1]["code_blocks"][0]["result"]["stdout"]
