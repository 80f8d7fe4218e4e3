"""`--rollout-time-limit-s`: past it the agent gets no more turns, and a policy request, code
block or sub-agent in progress is cut there; the rollout ends truncated and is scored exactly as
one truncated by --max-steps, with `time_limited` = 1.0."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis import Redis

from common.rewards import finished_reward
from common.wire import RolloutJob, RolloutResult
from rollout_workers import job as job_module
from rollout_workers import rollout
from rollout_workers.outcome import RolloutOutcome
from rollout_workers.policy import PolicyClient
from tests.conftest import assert_nothing_left_running, descendants
from tests.fakes.agent_scripts import is_sub_agent
from tests.fakes.scripted_llm import ScriptedLLM
from tests.faults.support import thinking
from tests.test_cancel import CountingGrader, group_job

LIMIT_S = 1.5
TEARDOWN_S = 3.0  # closing the sandbox and removing the working copy, after the limit


def _limited(job: RolloutJob, limit_s: float | None = LIMIT_S, **limits: Any) -> RolloutJob:
    return job.model_copy(
        update={
            "rollouts_per_group": 1,
            "grade_unfinished": False,
            "limits": job.limits.model_copy(
                update={"rollout_time_limit_s": limit_s, "max_steps": 1000, **limits}
            ),
        }
    )


def _run(llm: ScriptedLLM, limit_s: float = LIMIT_S, **limits: Any) -> tuple[RolloutOutcome, float]:
    job = _limited(group_job(llm.url), limit_s, **limits)

    async def run() -> RolloutOutcome:
        client = PolicyClient(job.policy, job.limits)
        try:
            return await rollout.run_rollout(job, client, "system")
        finally:
            await client.aclose()

    began = time.monotonic()
    outcome = asyncio.run(run())
    return outcome, time.monotonic() - began


def test_past_the_limit_the_agent_gets_no_more_turns() -> None:
    with ScriptedLLM(script=thinking, delay_s=0.2) as llm:
        outcome, took_s = _run(llm)
    assert outcome.truncated and outcome.time_limited and not outcome.finished
    assert 1 <= outcome.steps <= LIMIT_S / 0.2 + 1
    assert took_s < LIMIT_S + TEARDOWN_S


def _turn(messages: list[dict[str, Any]]) -> int:
    return sum(m.get("role") == "assistant" for m in messages)


def _asks_a_sub_agent(messages: list, rng: object) -> str:
    if is_sub_agent(messages):
        return "Still looking."
    return "```python\nprint(llm_query('What is in the repository?'))\n```"


def _first_request(body: dict[str, Any]) -> bool:
    return _turn(body["messages"]) == 0


SLEEPS = "```python\nimport time\ntime.sleep(120)\n```"


@pytest.mark.parametrize(
    ("script", "hold_when", "steps"),
    [
        (thinking, _first_request, 0),
        (lambda messages, rng: SLEEPS, None, 1),
        (_asks_a_sub_agent, lambda body: is_sub_agent(body["messages"]), 1),
    ],
    ids=["policy-request", "code-block", "sub-agent"],
)
def test_what_is_in_progress_at_the_limit_is_not_waited_for(
    script: Callable[[list, object], str],
    hold_when: Callable[[dict[str, Any]], bool] | None,
    steps: int,
) -> None:
    before = descendants()
    with ScriptedLLM(script=script, hold_when=hold_when) as llm:
        try:  # the request's and the code block's own timeouts are far past the limit
            outcome, took_s = _run(llm, request_timeout_s=120, code_timeout_s=120)
        finally:
            llm.release()
    assert outcome.truncated and outcome.time_limited and outcome.steps == steps
    assert took_s < LIMIT_S + TEARDOWN_S
    assert_nothing_left_running(before, "a rollout cut by its time limit")


def _post(job: RolloutJob, grader: CountingGrader, redis_url: str) -> RolloutResult:
    async def attempt() -> RolloutResult | None:
        client = PolicyClient(job.policy, job.limits)
        try:
            return await job_module._rollout_and_post(
                Redis.from_url(redis_url), job, 0, client, job_module.GraderClient(grader.url),
                "system", finished_reward,
            )  # fmt: skip
        finally:
            await client.aclose()

    result = asyncio.run(attempt())
    assert result is not None
    return result


def test_a_time_limited_rollout_is_scored_as_a_max_steps_one(redis_url: str) -> None:
    with CountingGrader() as grader, ScriptedLLM(script=thinking, delay_s=0.2) as llm:
        by_time = _post(_limited(group_job(llm.url, grader.url)), grader, redis_url)
        by_steps = _post(
            _limited(group_job(llm.url, grader.url), None, max_steps=2), grader, redis_url
        )
        assert grader.gradings == 0  # unfinished: reward 0 without a grading, both
    timed, stepped = by_time.trajectory.metrics, by_steps.trajectory.metrics
    assert by_time.status == by_steps.status == "ok"
    assert timed["time_limited"] == 1.0 and stepped["time_limited"] == 0.0
    assert stepped["steps"] == 2 and timed["steps"] >= 1
    assert by_time.trajectory.reward == by_steps.trajectory.reward == 0.0
    ignored = {"time_limited", "steps", "prompt_tokens", "completion_tokens", "llm_time_s",
               "repl_time_s", "diff_lines"}  # fmt: skip
    assert {k: v for k, v in timed.items() if k not in ignored} == {
        k: v for k, v in stepped.items() if k not in ignored
    }
    assert timed["truncated"] is True and timed["grading_skipped"] is True
