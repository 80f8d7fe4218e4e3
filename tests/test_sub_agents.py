"""Sub-agents answering llm_query from the agent's code: llm_query_batched asks them at once
(proven in flight together, never by sleeping), answers in order, within one budget per rollout;
a sub-agent past the context budget answers with its last reply."""

from __future__ import annotations

import ast
import asyncio
import inspect
import sys
import threading

from common.wire import PolicyRef
from rollout_workers.policy import PolicyClient
from rollout_workers.repl import Repl
from rollout_workers.rollout import RolloutOutcome
from rollout_workers.sub_agents import MAX_DEPTH, OUT_OF_CONTEXT, SUB_AGENT_STEPS, SubAgents
from tests.fakes.scripted_llm import ScriptedLLM
from tests.jobs import rollout_limits
from tests.test_rollout import _workdir


def _batched_session(
    code: str, limit: int, llm: ScriptedLLM, max_context_tokens: int = 10_000
) -> tuple[str, RolloutOutcome, list[dict]]:
    limits = rollout_limits(max_context_tokens=max_context_tokens)

    async def session() -> tuple[str, RolloutOutcome, list[dict]]:
        client = PolicyClient(
            PolicyRef(inference_name="m@0", policy_step=0, endpoint=llm.url), limits
        )
        outcome = RolloutOutcome()
        agents = SubAgents(client, outcome, limit, _workdir(), 20, 1000)
        repl = Repl(agents.workdir, agents)
        agents.repl = repl
        try:
            await repl.start()
            result = await repl.execute(code, 60)
        finally:
            await repl.close()
            await client.aclose()
        return result.output, outcome, agents.calls

    return asyncio.run(session())


def _answer_plainly(messages: list, rng: object) -> str:
    return f"answer to {messages[1]['content']}"


def test_llm_query_batched_asks_its_sub_agents_at_once_and_answers_in_order() -> None:
    with ScriptedLLM(script=_answer_plainly) as llm:
        llm.hold(3)
        all_held: list[bool] = []

        def release_once_all_are_held() -> None:
            # Sequential queries would never have three requests held: this times out.
            all_held.append(llm.wait_held(3, timeout_s=30))
            llm.release()

        waiter = threading.Thread(target=release_once_all_are_held)
        waiter.start()
        try:
            output, outcome, calls = _batched_session(
                "print(llm_query_batched(['q1', 'q2', 'q3']))", limit=5, llm=llm
            )
        finally:
            llm.release()
            waiter.join()
    assert all_held == [True], "the batch's requests were not in flight at the same time"
    assert output.strip() == "['answer to q1', 'answer to q2', 'answer to q3']"
    assert outcome.sub_queries == 3 and len(outcome.histories) == 3
    assert [call["prompt"] for call in calls] == ["q1", "q2", "q3"]  # as asked, not as finished


def test_llm_query_batched_shares_the_rollouts_sub_query_budget() -> None:
    with ScriptedLLM(script=_answer_plainly) as llm:
        output, outcome, calls = _batched_session(
            "print(llm_query('q0'))\nprint(llm_query_batched(['q1', 'q2', 'q3']))\n"
            "print(llm_query_batched([]))",
            limit=3,
            llm=llm,
        )
    first, batch, empty = output.strip().splitlines()
    assert first == "answer to q0" and empty == "[]"
    answers = ast.literal_eval(batch)
    assert answers[:2] == ["answer to q1", "answer to q2"] and "limit reached" in answers[2]
    assert outcome.sub_queries == 3 and llm.requests == 3
    assert len(calls) == 3 and all(isinstance(c["execution_time"], float) for c in calls)


def test_a_sub_agent_past_the_context_budget_answers_with_its_last_reply() -> None:
    def wordy(messages: list, rng: object) -> str:
        return "Still looking.\n```repl\nprint(' '.join(['word'] * 200))\n```"

    with ScriptedLLM(script=wordy) as llm:
        output, outcome, _ = _batched_session(
            "print(llm_query('Where?'))", limit=2, llm=llm, max_context_tokens=300
        )
    assert output.startswith(OUT_OF_CONTEXT) and "Still looking." in output
    assert llm.requests == 1  # the next request would not have fitted: it was never sent
    [history] = outcome.histories
    assert [item.kind for item in history.messages_and_choices] == ["message", "message", "choice"]


def _ask_once(llm: ScriptedLLM, prompt: str) -> tuple[str, RolloutOutcome]:
    limits = rollout_limits()

    async def ask() -> tuple[str, RolloutOutcome]:
        client = PolicyClient(
            PolicyRef(inference_name="m@0", policy_step=0, endpoint=llm.url), limits
        )
        outcome = RolloutOutcome()
        agents = SubAgents(client, outcome, 10, _workdir(), 20, 1000)
        try:
            return await agents(prompt), outcome
        finally:
            await client.aclose()

    return asyncio.run(ask())


def test_a_sub_agent_has_at_most_8_turns() -> None:
    def always_code(messages: list, rng: object) -> str:
        turn = sum(m["role"] == "assistant" for m in messages)
        return f"Turn {turn}.\n```repl\nprint({turn})\n```"

    with ScriptedLLM(script=always_code, record=True) as llm:
        answer, outcome = _ask_once(llm, "Keep going.")
    assert llm.requests == SUB_AGENT_STEPS == 8
    assert answer.startswith("[the sub-agent gave no answer in 8 turns; its last reply]")
    assert answer.endswith("Turn 7.\n```repl\nprint(7)\n```")
    [history] = outcome.histories
    assert sum(item.kind == "choice" for item in history.messages_and_choices) == 8


def test_sub_agents_ask_down_to_depth_2_then_get_one_plain_completion() -> None:
    def recurse(messages: list, rng: object) -> str:
        if messages[0]["role"] == "user":  # no system prompt: a plain completion
            return "plain answer"
        if not any(m["role"] == "assistant" for m in messages):
            return "```repl\nprint('below:', llm_query('deeper?'))\n```"
        return "Heard " + messages[-1]["content"].split("below:", 1)[1].strip()

    with ScriptedLLM(script=recurse, record=True) as llm:
        answer, outcome = _ask_once(llm, "top?")
    assert answer == "Heard Heard plain answer"
    agents = [m for m, _ in llm.exchanges if m[0]["role"] == "system"]
    plain = [m for m, _ in llm.exchanges if m[0]["role"] == "user"]
    assert len(agents) == 2 * MAX_DEPTH == 4, "depth 1 and depth 2 agents, two turns each"
    assert plain == [[{"role": "user", "content": "deeper?"}]]
    assert outcome.sub_queries == 3
    assert len(outcome.histories) == 3  # each sub-conversation trains


def test_sub_agents_do_not_import_the_rollout_loop() -> None:
    """No import cycle: both write to `rollout_workers.outcome`; neither imports the other."""
    tree = ast.parse(inspect.getsource(sys.modules[SubAgents.__module__]))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "rollout_workers.rollout" not in imported
    assert "rollout_workers.outcome" in imported
