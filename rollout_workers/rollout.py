"""One rollout: the agent in a persistent, sandboxed REPL over a working copy of the repository.

System prompt + task message (the problem statement only). Each turn the model's fenced
```repl / ```python blocks run in order in the REPL; their output, truncated head and tail, is
the next user message (a turn without code gets a short nudge). The loop ends when the code calls
`finish()`, after `max_steps` turns, or when the conversation reaches `max_context_tokens`
(counted from the endpoint's usage); the last two mark the rollout truncated. `llm_query` calls
go to the same policy and are kept, with their Choices, as additional histories. Raw Choices are
kept as they came. The outcome carries the diff of the working copy against the cached copy and,
when sampled, the iterations in the RLM visualizer's format.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common.errors import SandboxError
from common.prompts import task_message
from common.wire import RolloutJob, WireHistory, WireItem
from rollout_workers import sandbox
from rollout_workers.policy import ContextOverflow, PolicyClient
from rollout_workers.repl import Repl
from rollout_workers.sub_agents import SubAgents
from rollout_workers.text import extract_code_blocks, observation, truncate_middle
from rollout_workers.workdir import diff_against, make_working_copy

NUDGE = "No code block found. Write Python in a ```repl block, and call finish() when done."


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class RolloutOutcome:
    items: list[WireItem] = field(default_factory=list)
    histories: list[WireHistory] = field(default_factory=list)
    finished: bool = False
    truncated: bool = False
    steps: int = 0
    sub_queries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    repl_time_s: float = 0.0
    llm_time_s: float = 0.0
    request_retries: int = 0
    repl_restarts: int = 0
    diff: str = ""
    iterations: list[dict[str, Any]] = field(default_factory=list)  # RLM visualizer lines


async def run_rollout(
    job: RolloutJob, client: PolicyClient, system_prompt: str, record: bool = False
) -> RolloutOutcome:
    workdir, original = make_working_copy(job.cache_dir, job.scenario.instance_id)
    outcome = RolloutOutcome()
    limits = job.limits
    sub_queries = SubAgents(
        client, outcome, limits.max_sub_queries, workdir, limits.code_timeout_s,
        limits.max_output_chars,
    )  # fmt: skip
    repl = Repl(workdir, sub_queries)
    sub_queries.repl = repl
    try:
        await repl.start()
        await _loop(job, client, system_prompt, repl, outcome, sub_queries, record)
        outcome.repl_restarts = repl.restarts
        # Every sandbox process is gone before the working copy is read: nothing can swap a
        # file for a symlink or a FIFO under the diff, or keep writing while it runs.
        await repl.close()
        if survivors := sandbox.live_processes(repl.uid):
            raise SandboxError(
                f"{len(survivors)} sandbox processes of uid {repl.uid} survived SIGKILL: the "
                "working copy is not diffed while they run"
            )
        outcome.diff = diff_against(original, workdir)
        return outcome
    finally:
        await repl.close()
        shutil.rmtree(workdir.parent, ignore_errors=True)


async def _loop(
    job: RolloutJob,
    client: PolicyClient,
    system_prompt: str,
    repl: Repl,
    outcome: RolloutOutcome,
    sub_queries: SubAgents,
    record: bool,
) -> None:
    limits = job.limits
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": task_message(job.scenario.problem_statement)},
    ]
    outcome.items = [WireItem(kind="message", data=m) for m in messages]
    for iteration in range(1, limits.max_steps + 1):
        began = time.monotonic()
        prompt = [dict(m) for m in messages] if record else []
        try:
            completion = await client.complete(messages)
        except ContextOverflow:
            outcome.truncated = True
            return
        outcome.llm_time_s += time.monotonic() - began
        outcome.steps += 1
        sub_queries.count(completion)
        outcome.items.append(WireItem(kind="choice", data=completion.choice))
        messages.append({"role": "assistant", "content": completion.content})

        outputs, blocks, final_answer = [], [], None
        for code in extract_code_blocks(completion.content):
            sub_queries.calls = []
            result = await repl.execute(code, limits.code_timeout_s)
            outcome.repl_time_s += result.seconds
            output = truncate_middle(result.output, limits.max_output_chars)
            outputs.append(output)
            blocks.append(
                _code_block(code, output, result.seconds, sub_queries.calls, result.final_answer)
            )
            if result.final_answer is not None:
                final_answer = result.final_answer
                outcome.finished = True
                break
        if record:
            outcome.iterations.append(
                {
                    "type": "iteration",
                    "iteration": iteration,
                    "timestamp": _now(),
                    "prompt": prompt,
                    "response": completion.content,
                    "code_blocks": blocks,
                    "final_answer": final_answer,
                    "iteration_time": round(time.monotonic() - began, 4),
                }
            )
        if outcome.finished:
            return
        if completion.prompt_tokens + completion.completion_tokens >= limits.max_context_tokens:
            outcome.truncated = True
            return
        message = {"role": "user", "content": observation(outputs, NUDGE)}
        messages.append(message)
        outcome.items.append(WireItem(kind="message", data=message))
    outcome.truncated = True


def _code_block(
    code: str, output: str, seconds: float, calls: list[dict[str, Any]], final_answer: str | None
) -> dict[str, Any]:
    return {
        "code": code,
        "result": {
            "stdout": output,
            "stderr": "",
            "locals": {},
            "execution_time": round(seconds, 4),
            "rlm_calls": list(calls),
            "final_answer": final_answer,
        },
    }
