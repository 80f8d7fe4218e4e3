"""One rollout: the agent in a persistent, sandboxed REPL over a working copy of the repository.

System prompt + task message (the problem statement only). Each turn the model's fenced
```repl / ```python blocks run in order in the REPL; their output, truncated head and tail, is
the next user message (a turn without code gets a short nudge). When the next request would pass
`max_context_tokens` (counted from the endpoint's usage), the oldest middle turns are dropped
(`context.Context`); the conversation so far stays as it was sent, and the trimmed continuation
is trained as a segment of its own (an additional history), so every trained token sequence is
one the model saw. The loop ends when the code calls `finish()`, after `max_steps` turns, past
`rollout_time_limit_s` of wall time, or when even the system prompt, task and last turn pass the
budget; all but the first mark the rollout truncated. The time limit is checked between turns
and also cuts whatever is in progress when it passes (a policy request, a code block, its
sub-agents): nothing is waited for past it. Before each turn the rollout checks whether its group
was cancelled (`rollout_workers.cancel`) and, if so, raises `RolloutCancelled`. `llm_query`
calls go to the same policy and are kept, with their Choices, as additional histories. Raw
Choices are kept as they came. The outcome carries the diff of the working copy against the
cached copy and, when sampled, the iterations in the RLM visualizer's format.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from datetime import UTC, datetime
from typing import Any

from common.errors import SandboxError
from common.prompts import task_message
from common.wire import RolloutJob, WireHistory, WireItem
from rollout_workers import sandbox
from rollout_workers.cancel import GroupCancellation
from rollout_workers.context import Context
from rollout_workers.outcome import RolloutOutcome
from rollout_workers.policy import ContextOverflow, PolicyClient
from rollout_workers.repl import ExecResult, Repl
from rollout_workers.sub_agents import SubAgents
from rollout_workers.text import extract_code_blocks, observation, truncate_middle
from rollout_workers.workdir import diff_against, make_working_copy

NUDGE = "No code block found. Write Python in a ```repl block, and call finish() when done."


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def run_rollout(
    job: RolloutJob,
    client: PolicyClient,
    system_prompt: str,
    record: bool = False,
    outcome: RolloutOutcome | None = None,
    cancellation: GroupCancellation | None = None,
) -> RolloutOutcome:
    """`outcome`: filled in as the rollout goes, so that a caller keeps what a rollout that
    raised had done (its visualizer iterations). `cancellation`: the group's cancel flag, checked
    before every policy request (RolloutCancelled)."""
    limits = job.limits
    deadline = (  # the event loop's clock, which asyncio.timeout_at reads
        None
        if limits.rollout_time_limit_s is None
        else asyncio.get_running_loop().time() + limits.rollout_time_limit_s
    )
    if cancellation is not None:  # a fresh try after a sandbox failure: no sandbox for nothing
        await cancellation.check()
    workdir, original = make_working_copy(job.cache_dir, job.scenario.instance_id)
    outcome = outcome if outcome is not None else RolloutOutcome()
    sub_queries = SubAgents(
        client, outcome, limits.max_sub_queries, workdir, limits.code_timeout_s,
        limits.max_output_chars, cancellation=cancellation,
    )  # fmt: skip
    repl = Repl(workdir, sub_queries)
    sub_queries.repl = repl
    try:
        await repl.start()
        time_limit = asyncio.timeout_at(deadline)
        try:
            async with time_limit:
                await _loop(
                    job, client, system_prompt, repl, outcome, sub_queries, record, deadline,
                    cancellation,
                )  # fmt: skip
        except TimeoutError:
            if not time_limit.expired():
                raise
            # Cut mid-turn (a request, a code block): the REPL is closed below, as always.
            outcome.truncated = outcome.time_limited = True
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
    deadline: float | None = None,
    cancellation: GroupCancellation | None = None,
) -> None:
    limits = job.limits
    clock = asyncio.get_running_loop()
    context = Context(
        [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": task_message(job.scenario.problem_statement)},
        ]
    )
    outcome.items = [WireItem(kind="message", data=dict(m)) for m in context.messages]
    segment = outcome.items  # where this conversation's Choices are trained
    continuations: list[list[WireItem]] = []
    try:
        for iteration in range(1, limits.max_steps + 1):
            if cancellation is not None:
                await cancellation.check()
            if deadline is not None and clock.time() >= deadline:
                outcome.truncated = outcome.time_limited = True  # no more turns, as max_steps
                return
            began = time.monotonic()
            prompt = context.request()
            try:
                completion = await client.complete(prompt)
            except ContextOverflow:
                # Our count fell short of the endpoint's: keep only the minimum, or stop.
                if not context.drop_all_middle():
                    outcome.truncated = True
                    return
                outcome.context_trims += 1
                segment = _new_segment(context, continuations)
                prompt = context.request()
                try:
                    completion = await client.complete(prompt)
                except ContextOverflow:
                    outcome.truncated = True
                    return
            outcome.llm_time_s += time.monotonic() - began
            outcome.steps += 1
            sub_queries.count(completion)
            segment.append(outcome.reply_item(completion.choice))
            context.answered(
                completion.content, completion.prompt_tokens, completion.completion_tokens
            )
            blocks, outputs, final_answer = await _run_blocks(
                completion.content, repl, sub_queries, limits.code_timeout_s,
                limits.max_output_chars, outcome,
            )  # fmt: skip
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
            message = {"role": "user", "content": observation(outputs, NUDGE)}
            context.observe(message)
            trimmed = context.trim(limits.max_context_tokens)
            if trimmed is None:
                outcome.truncated = True
                return
            if trimmed:
                outcome.context_trims += 1
                segment = _new_segment(context, continuations)
            else:
                segment.append(WireItem(kind="message", data=dict(message)))
        outcome.truncated = True
    finally:
        outcome.histories.extend(
            WireHistory(messages_and_choices=items)
            for items in continuations
            if any(item.is_reply for item in items)
        )


def _new_segment(context: Context, continuations: list[list[WireItem]]) -> list[WireItem]:
    """The trimmed conversation as the next request will send it: a segment of its own. Earlier
    replies in it are plain messages (their Choices trained in the segment that made them)."""
    items = [WireItem(kind="message", data=dict(m)) for m in context.messages]
    continuations.append(items)
    return items


async def _run_blocks(
    reply: str,
    repl: Repl,
    sub_queries: SubAgents,
    timeout_s: float,
    max_output_chars: int,
    outcome: RolloutOutcome,
) -> tuple[list[dict[str, Any]], list[str], str | None]:
    """Run the reply's code blocks in order, up to the one that calls finish()."""
    blocks: list[dict[str, Any]] = []
    outputs: list[str] = []
    for code in extract_code_blocks(reply):
        sub_queries.calls = []
        result = await repl.execute(code, timeout_s)
        outcome.repl_time_s += result.seconds
        outputs.append(truncate_middle(result.output, max_output_chars))
        blocks.append(_code_block(code, result, sub_queries.calls, max_output_chars))
        if result.final_answer is not None:
            outcome.finished = True
            return blocks, outputs, result.final_answer
    return blocks, outputs, None


def _code_block(
    code: str, result: ExecResult, calls: list[dict[str, Any]], max_chars: int
) -> dict[str, Any]:
    """One code block as the RLM visualizer shows it: stdout and stderr apart."""
    return {
        "code": code,
        "result": {
            "stdout": truncate_middle(result.stdout, max_chars),
            "stderr": truncate_middle(result.stderr, max_chars),
            "locals": {},
            "execution_time": round(result.seconds, 4),
            "rlm_calls": list(calls),
            "final_answer": result.final_answer,
        },
    }
