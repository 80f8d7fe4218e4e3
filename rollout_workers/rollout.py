"""One rollout: the REPL loop at its simplest, producing a `WireTrajectory`.

System prompt + task message; each turn the model's fenced ```python / ```repl blocks run in
order and their output comes back as the next user message; the loop ends when the code calls
`finish()`, after `max_steps` turns, or when the conversation reaches `max_context_tokens`
(counted from the endpoint's usage). Raw choices are kept as they came.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.health import ROLLOUT_DIR_PREFIX
from common.prompts import task_message
from common.rewards import RewardInput
from common.wire import RolloutJob, WireItem, WireTrajectory
from rollout_workers import sandbox
from rollout_workers.policy import ContextOverflow, PolicyClient

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
class _Tally:
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    code_time_s: float = 0.0
    llm_time_s: float = 0.0
    request_retries: int = 0


def rollout_dir_prefix() -> str:
    """Per worker process, so a worker can clean up after itself when stopped."""
    import os

    return f"{ROLLOUT_DIR_PREFIX}{os.getpid()}-"


async def run_rollout(
    job: RolloutJob, client: PolicyClient, system_prompt: str, reward_fn: Any
) -> WireTrajectory:
    workdir = Path(tempfile.mkdtemp(prefix=rollout_dir_prefix()))
    try:
        return await _loop(job, client, system_prompt, reward_fn, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _loop(
    job: RolloutJob, client: PolicyClient, system_prompt: str, reward_fn: Any, workdir: Path
) -> WireTrajectory:
    limits = job.limits
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": task_message(job.scenario.problem_statement)},
    ]
    items = [WireItem(kind="message", data=m) for m in messages]
    tally = _Tally()
    finished = truncated = False
    for _ in range(limits.max_steps):
        started = time.monotonic()
        try:
            completion = await client.complete(messages)
        except ContextOverflow:
            truncated = True
            break
        tally.llm_time_s += time.monotonic() - started
        tally.steps += 1
        tally.prompt_tokens += completion.prompt_tokens
        tally.completion_tokens += completion.completion_tokens
        tally.request_retries += completion.retries
        items.append(WireItem(kind="choice", data=completion.choice))
        messages.append({"role": "assistant", "content": completion.content})

        outputs = []
        for code in extract_code_blocks(completion.content):
            result = await sandbox.run_block(code, workdir, limits.code_timeout_s)
            tally.code_time_s += result.seconds
            outputs.append(truncate_middle(result.output, limits.max_output_chars))
            if sandbox.finished(workdir):
                finished = True
                break
        if finished:
            break
        context_used = completion.prompt_tokens + completion.completion_tokens
        if context_used >= limits.max_context_tokens:
            truncated = True
            break
        observation = "\n\n".join(f"Output:\n{o or '(no output)'}" for o in outputs) or NUDGE
        message = {"role": "user", "content": observation}
        messages.append(message)
        items.append(WireItem(kind="message", data=message))
    else:
        truncated = True

    reward = float(
        reward_fn(RewardInput(finished=finished, truncated=truncated, steps=tally.steps))
    )
    return WireTrajectory(
        messages_and_choices=items,
        reward=reward,
        initial_policy_version=job.policy.policy_step,
        final_policy_version=job.policy.policy_step,
        metrics={
            "steps": tally.steps,
            "finished": finished,
            "truncated": truncated,
            "prompt_tokens": tally.prompt_tokens,
            "completion_tokens": tally.completion_tokens,
            "code_time_s": round(tally.code_time_s, 4),
            "llm_time_s": round(tally.llm_time_s, 4),
            "request_retries": tally.request_retries,
        },
        metadata={"instance_id": job.scenario.instance_id, "policy_step": job.policy.policy_step},
    )
