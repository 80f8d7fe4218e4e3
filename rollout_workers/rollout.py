"""One rollout: the REPL loop at its simplest, over a working copy of the repository.

System prompt + task message; each turn the model's fenced ```python / ```repl blocks run in
order in the working copy and their output comes back as the next user message; the loop ends
when the code calls `finish()`, after `max_steps` turns, or when the conversation reaches
`max_context_tokens` (counted from the endpoint's usage). Raw choices are kept as they came.
The outcome carries the diff of the working copy against the cached repository.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.prompts import task_message
from common.wire import RolloutJob, WireItem
from rollout_workers import sandbox
from rollout_workers.policy import ContextOverflow, PolicyClient
from rollout_workers.workdir import diff_against, make_working_copy

_CODE_BLOCK = re.compile(r"```(?:python|repl)[^\n]*\n(.*?)```", re.DOTALL)
NUDGE = "No code block found. Write Python in a ```python block, and call finish() when done."


def extract_code_blocks(text: str) -> list[str]:
    return [block for block in _CODE_BLOCK.findall(text) if block.strip()]


def truncate_middle(text: str, limit: int) -> str:
    """Keep the head and the tail: errors usually sit at the end, context at the start."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters cut] ...\n{text[-half:]}"


@dataclass
class RolloutOutcome:
    items: list[WireItem] = field(default_factory=list)
    finished: bool = False
    truncated: bool = False
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    code_time_s: float = 0.0
    llm_time_s: float = 0.0
    request_retries: int = 0
    diff: str = ""


async def run_rollout(job: RolloutJob, client: PolicyClient, system_prompt: str) -> RolloutOutcome:
    workdir, original = make_working_copy(job.cache_dir, job.scenario.instance_id)
    try:
        outcome = await _loop(job, client, system_prompt, workdir)
        outcome.diff = diff_against(original, workdir)
        return outcome
    finally:
        shutil.rmtree(workdir.parent, ignore_errors=True)


async def _loop(
    job: RolloutJob, client: PolicyClient, system_prompt: str, workdir: Path
) -> RolloutOutcome:
    limits = job.limits
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": task_message(job.scenario.problem_statement)},
    ]
    outcome = RolloutOutcome(items=[WireItem(kind="message", data=m) for m in messages])
    for _ in range(limits.max_steps):
        started = time.monotonic()
        try:
            completion = await client.complete(messages)
        except ContextOverflow:
            outcome.truncated = True
            break
        outcome.llm_time_s += time.monotonic() - started
        outcome.steps += 1
        outcome.prompt_tokens += completion.prompt_tokens
        outcome.completion_tokens += completion.completion_tokens
        outcome.request_retries += completion.retries
        outcome.items.append(WireItem(kind="choice", data=completion.choice))
        messages.append({"role": "assistant", "content": completion.content})

        outputs = []
        for code in extract_code_blocks(completion.content):
            result = await sandbox.run_block(code, workdir, limits.code_timeout_s)
            outcome.code_time_s += result.seconds
            outputs.append(truncate_middle(result.output, limits.max_output_chars))
            if sandbox.finished(workdir):
                outcome.finished = True
                break
        if outcome.finished:
            break
        if completion.prompt_tokens + completion.completion_tokens >= limits.max_context_tokens:
            outcome.truncated = True
            break
        observation = "\n\n".join(f"Output:\n{o or '(no output)'}" for o in outputs) or NUDGE
        message = {"role": "user", "content": observation}
        messages.append(message)
        outcome.items.append(WireItem(kind="message", data=message))
    else:
        outcome.truncated = True
    return outcome
