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

import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common.prompts import task_message
from common.wire import RolloutJob, WireHistory, WireItem
from rollout_workers.policy import Completion, ContextOverflow, PolicyClient
from rollout_workers.repl import Repl
from rollout_workers.workdir import diff_against, make_working_copy

_CODE_BLOCK = re.compile(r"```(?:python|repl)[^\n]*\n(.*?)```", re.DOTALL)
NUDGE = "No code block found. Write Python in a ```repl block, and call finish() when done."


def extract_code_blocks(text: str) -> list[str]:
    return [block for block in _CODE_BLOCK.findall(text) if block.strip()]


def truncate_middle(text: str, limit: int) -> str:
    """Keep the head and the tail: errors usually sit at the end, context at the start."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters cut] ...\n{text[-half:]}"


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


class _SubQueries:
    """Answers `llm_query` from the agent's code: one completion each, bounded in number."""

    def __init__(self, client: PolicyClient, outcome: RolloutOutcome, limit: int) -> None:
        self.client, self.outcome, self.limit = client, outcome, limit
        self.calls: list[dict[str, Any]] = []  # of the current code block, for the visualizer

    async def __call__(self, prompt: str) -> str:
        if self.outcome.sub_queries >= self.limit:
            return f"[llm_query limit reached: at most {self.limit} per rollout]"
        self.outcome.sub_queries += 1
        message = {"role": "user", "content": prompt}
        began = time.monotonic()
        try:
            completion = await self.client.complete([message])
        except ContextOverflow:
            return "[llm_query: the prompt is too long]"
        seconds = time.monotonic() - began
        self.outcome.llm_time_s += seconds
        self._count(completion)
        self.outcome.histories.append(
            WireHistory(
                messages_and_choices=[
                    WireItem(kind="message", data=message),
                    WireItem(kind="choice", data=completion.choice),
                ]
            )
        )
        self.calls.append(
            {
                "root_model": self.client.policy.inference_name,
                "prompt": prompt,
                "response": completion.content,
                "usage_summary": {
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                },
                "execution_time": round(seconds, 4),
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
            }
        )
        return completion.content

    def _count(self, completion: Completion) -> None:
        self.outcome.prompt_tokens += completion.prompt_tokens
        self.outcome.completion_tokens += completion.completion_tokens
        self.outcome.request_retries += completion.retries


async def run_rollout(
    job: RolloutJob, client: PolicyClient, system_prompt: str, record: bool = False
) -> RolloutOutcome:
    workdir, original = make_working_copy(job.cache_dir, job.scenario.instance_id)
    outcome = RolloutOutcome()
    sub_queries = _SubQueries(client, outcome, job.limits.max_sub_queries)
    repl = Repl(workdir, sub_queries)
    try:
        await repl.start()
        await _loop(job, client, system_prompt, repl, outcome, sub_queries, record)
        outcome.repl_restarts = repl.restarts
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
    sub_queries: _SubQueries,
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
        sub_queries._count(completion)
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
        observation = "\n\n".join(f"Output:\n{o or '(no output)'}" for o in outputs) or NUDGE
        message = {"role": "user", "content": observation}
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
