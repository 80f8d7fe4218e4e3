"""`llm_query(prompt)` from the agent's code, answered by a sub-agent.

A sub-agent is the same policy with a system prompt of its own and a REPL of its own over the same
working copy (no `finish` or `apply_patch`): at most `SUB_AGENT_STEPS` turns, and its first reply
without code is its answer. Sub-agents may ask further sub-agents down to `MAX_DEPTH`; deeper, a
question gets one plain completion. All share one budget (`--max-sub-queries`) per rollout. Each
sub-conversation, Choices included, becomes an additional history of the trajectory, so it trains.
`llm_query_batched` calls several at once (the REPL gathers them); the budget check and count
happen before the first await, so concurrent calls never overspend it. Before each request a
sub-agent checks whether the group was cancelled (`rollout_workers.cancel`), as the agent does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from common.prompts import sub_agent_system_prompt
from common.wire import WireHistory, WireItem
from rollout_workers.cancel import GroupCancellation
from rollout_workers.context import estimate_tokens
from rollout_workers.outcome import RolloutOutcome
from rollout_workers.policy import Completion, ContextOverflow, PolicyClient
from rollout_workers.repl import Repl
from rollout_workers.text import extract_code_blocks, observation, truncate_middle

MAX_DEPTH = 2
SUB_AGENT_STEPS = 8
NUDGE = "Reply with your answer and no code block, or look further with a ```repl block."
TOO_LONG = "[llm_query: the conversation is too long]"
OUT_OF_CONTEXT = "[the sub-agent reached the context budget before answering; its last reply]"


class SubAgents:
    def __init__(
        self,
        client: PolicyClient,
        outcome: RolloutOutcome,
        limit: int,
        workdir: Path,
        code_timeout_s: float,
        max_output_chars: int,
        depth: int = 1,
        cancellation: GroupCancellation | None = None,
    ) -> None:
        self.client, self.outcome, self.limit = client, outcome, limit
        self.workdir, self.depth = workdir, depth
        self.cancellation = cancellation
        self.code_timeout_s, self.max_output_chars = code_timeout_s, max_output_chars
        self.repl: Repl | None = None  # the REPL whose code calls us: sub-REPLs share its uid
        self.calls: list[dict[str, Any]] = []  # of the current code block, for the visualizer

    def count(self, completion: Completion) -> None:
        self.outcome.prompt_tokens += completion.prompt_tokens
        self.outcome.completion_tokens += completion.completion_tokens
        self.outcome.request_retries += completion.retries

    async def __call__(self, prompt: str) -> str:
        if self.outcome.sub_queries >= self.limit:
            return f"[llm_query limit reached: at most {self.limit} per rollout]"
        self.outcome.sub_queries += 1
        began = time.monotonic()
        items: list[WireItem] = []
        usage = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0}
        # The call's place in the block's record is taken now: concurrent calls (a batch) are
        # shown in the order the code asked them, not the order they finished.
        calls, call = self.calls, {"prompt": prompt}
        calls.append(call)
        try:
            if self.depth > MAX_DEPTH:
                messages = [{"role": "user", "content": prompt}]
                answer, _ = await self._completion(messages, items, usage)
            else:
                answer = await self._agent(prompt, items, usage)
        except BaseException:
            calls.remove(call)  # never a record without its timing
            raise
        if any(item.is_reply for item in items):
            self.outcome.histories.append(WireHistory(messages_and_choices=items))
        model = self.client.policy.inference_name
        call |= {
            "root_model": model,
            "response": answer,
            "usage_summary": usage_summary(model, usage),
            "execution_time": round(time.monotonic() - began, 4),
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
        }
        return answer

    async def _completion(
        self, messages: list[dict[str, Any]], items: list[WireItem], usage: dict[str, int]
    ) -> tuple[str, int]:
        """The reply, and the tokens the conversation now holds (the endpoint's count)."""
        if not items:
            items.extend(WireItem(kind="message", data=m) for m in messages)
        if self.cancellation is not None:
            await self.cancellation.check()  # raises RolloutCancelled: out through the REPL
        began = time.monotonic()
        try:
            completion = await self.client.complete(messages)
        except ContextOverflow:
            return TOO_LONG, 0
        self.outcome.llm_time_s += time.monotonic() - began
        self.count(completion)
        usage["calls"] += 1
        usage["prompt_tokens"] += completion.prompt_tokens
        usage["completion_tokens"] += completion.completion_tokens
        items.append(self.outcome.reply_item(completion.choice))
        messages.append({"role": "assistant", "content": completion.content})
        return completion.content, completion.prompt_tokens + completion.completion_tokens

    async def _agent(self, prompt: str, items: list[WireItem], usage: dict[str, int]) -> str:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": sub_agent_system_prompt()},
            {"role": "user", "content": prompt},
        ]
        deeper = SubAgents(
            self.client, self.outcome, self.limit, self.workdir, self.code_timeout_s,
            self.max_output_chars, self.depth + 1, self.cancellation,
        )  # fmt: skip
        repl = Repl(self.workdir, deeper, allow_finish=False, parent=self.repl)
        deeper.repl = repl
        reply = ""
        try:
            await repl.start()
            for _ in range(SUB_AGENT_STEPS):
                reply, held = await self._completion(messages, items, usage)
                blocks = extract_code_blocks(reply)
                if not blocks:
                    return reply
                outputs = []
                for code in blocks:
                    result = await repl.execute(code, self.code_timeout_s)
                    outputs.append(truncate_middle(result.output, self.max_output_chars))
                message = {"role": "user", "content": observation(outputs, NUDGE)}
                # A sub-conversation is short: past the budget it ends (never trimmed), so its
                # one history stays exactly what the model saw.
                if (
                    held + estimate_tokens(message["content"])
                    > self.client.limits.max_context_tokens
                ):
                    return f"{OUT_OF_CONTEXT}\n{reply}"
                messages.append(message)
                items.append(WireItem(kind="message", data=message))
        finally:
            await repl.close()
        return f"[the sub-agent gave no answer in {SUB_AGENT_STEPS} turns; its last reply]\n{reply}"


def usage_summary(model: str, usage: dict[str, int]) -> dict[str, Any]:
    """The RLM visualizer's shape: totals per model."""
    return {
        "model_usage_summaries": {
            model: {
                "total_calls": usage["calls"],
                "total_input_tokens": usage["prompt_tokens"],
                "total_output_tokens": usage["completion_tokens"],
            }
        }
    }
