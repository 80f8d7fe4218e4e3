"""The scripted LLM answers like vLLM's OpenAI server where the workers read, and the worker's
policy client handles each answer as it must against the real thing: logprobs asked for,
`length` cuts, keep-alive, `content: null`, `<think>` text, context-length 400s, unknown-model
404s, aborts, hung requests, dropped and refused connections."""

from __future__ import annotations

import asyncio
import http.client
import json
import random
from typing import Any

import pytest
from openai.types.chat.chat_completion import ChatCompletion

from common.errors import EndpointError
from common.wire import PolicyRef, RolloutLimits
from rollout_workers.policy import ContextOverflow, PolicyClient
from tests.fakes.scripted_llm import FINISH, THINK, ScriptedLLM, finish_at_once
from tests.jobs import rollout_limits
from trainer.services import free_port

MESSAGES = [{"role": "system", "content": "You fix bugs."}, {"role": "user", "content": "Fix."}]


def limits(**overrides: Any) -> RolloutLimits:
    values = {"max_completion_tokens": 4000, "request_timeout_s": 5, "rollout_retries": 2}
    return rollout_limits(**{**values, **overrides})


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def complete(url: str, model: str = "m@0", **limit_overrides: Any) -> Any:
    async def run() -> Any:
        client = PolicyClient(PolicyRef(inference_name=model, policy_step=0, endpoint=url),
                              limits(**limit_overrides))  # fmt: skip
        try:
            return await client.complete(MESSAGES)
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_logprobs_only_when_asked() -> None:
    with ScriptedLLM(script=finish_at_once) as llm:
        _, plain = post(llm.url, {"model": "m@0", "messages": MESSAGES})
        _, asked = post(llm.url, {"model": "m@0", "messages": MESSAGES, "logprobs": True})
        _, top = post(
            llm.url, {"model": "m@0", "messages": MESSAGES, "logprobs": True, "top_logprobs": 2}
        )
    assert plain["choices"][0]["logprobs"] is None
    entries = asked["choices"][0]["logprobs"]["content"]
    assert len(entries) == asked["usage"]["completion_tokens"] > 0
    assert all(e["token"].startswith("token_id:") and e["top_logprobs"] == [] for e in entries)
    assert all(len(e["top_logprobs"]) == 2 for e in top["choices"][0]["logprobs"]["content"])
    assert "token_ids" not in asked["choices"][0]  # vLLM: only with return_token_ids
    for answer in (plain, asked, top):  # OpenAI's own model parses each
        ChatCompletion.model_validate(answer)


def test_the_policy_client_asks_for_logprobs_and_refuses_answers_without() -> None:
    with ScriptedLLM(script=finish_at_once) as llm:
        completion = complete(llm.url)
        assert llm.bodies[0]["logprobs"] is True
        assert completion.choice["logprobs"]["content"], "the trainer needs them"
        llm.inject("no_logprobs", 3)
        with pytest.raises(EndpointError, match="without logprobs"):
            complete(llm.url)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_cuts_the_completion_with_finish_reason_length(field: str) -> None:
    with ScriptedLLM(script=finish_at_once) as llm:
        _, full = post(llm.url, {"model": "m", "messages": MESSAGES, "logprobs": True})
        _, cut = post(llm.url, {"model": "m", "messages": MESSAGES, "logprobs": True, field: 3})
        completion = complete(llm.url, max_completion_tokens=2)
    assert full["choices"][0]["finish_reason"] == "stop"
    assert full["choices"][0]["message"]["content"] == FINISH
    choice = cut["choices"][0]
    assert choice["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 3
    assert len(choice["logprobs"]["content"]) == 3
    assert FINISH.startswith(choice["message"]["content"]) and choice["message"]["content"]
    assert llm.bodies[-1]["max_tokens"] == 2, "the worker sends its completion cap"
    assert completion.choice["finish_reason"] == "length" and completion.completion_tokens == 2


def test_one_connection_serves_several_requests() -> None:
    with ScriptedLLM(script=finish_at_once) as llm:
        host, port = "127.0.0.1", int(llm.url.split(":")[2].split("/")[0])
        connection = http.client.HTTPConnection(host, port, timeout=10)
        for _ in range(3):
            connection.request("POST", "/v1/chat/completions", json.dumps({"messages": MESSAGES}))
            response = connection.getresponse()
            assert response.status == 200 and response.version == 11
            json.loads(response.read())
        connection.close()

        async def three_turns() -> None:
            client = PolicyClient(PolicyRef(inference_name="m@0", policy_step=0,
                                            endpoint=llm.url), limits())  # fmt: skip
            try:
                for _ in range(3):
                    await client.complete(MESSAGES)
            finally:
                await client.aclose()

        asyncio.run(three_turns())
    assert llm.requests == 6 and llm.connections == 2, "one connection for each client"


def test_content_null_and_think_text_come_through_untouched() -> None:
    with ScriptedLLM(script=finish_at_once) as llm:
        llm.inject("null_content")
        null = complete(llm.url)
        llm.inject("think")
        think = complete(llm.url)
    assert null.choice["message"]["content"] is None and null.content == ""
    assert think.content == THINK + FINISH
    assert think.choice["message"]["content"].startswith("<think>\n")


def test_a_prompt_too_long_is_a_context_overflow_never_retried() -> None:
    with ScriptedLLM() as llm:
        status, body = post(llm.url, {"model": "m", "messages": MESSAGES})
        assert status == 200
        llm.inject("context_overflow")
        status, body = post(llm.url, {"model": "m", "messages": MESSAGES})
        assert status == 400
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["code"] == 400 and "maximum context length" in body["error"]["message"]
        llm.inject("context_overflow")
        before = llm.requests
        with pytest.raises(ContextOverflow):
            complete(llm.url)
        assert llm.requests == before + 1


def test_an_unknown_model_gets_vllms_404_and_fails_the_request() -> None:
    with ScriptedLLM(serves=lambda model: model in {"base", "m@1"}) as llm:
        assert complete(llm.url, model="m@1").choice["finish_reason"] == "stop"
        status, body = post(llm.url, {"model": "m@0", "messages": MESSAGES})
        assert status == 404 and body["error"]["type"] == "NotFoundError"
        assert "`m@0` does not exist" in body["error"]["message"]
        with pytest.raises(EndpointError, match="HTTP 404"):
            complete(llm.url, model="m@0", rollout_retries=1)


def test_aborted_hung_and_dropped_requests_are_retried() -> None:
    with ScriptedLLM(script=finish_at_once) as llm:
        for kind in ("abort", "hang", "drop"):
            llm.inject(kind)
        completion = complete(llm.url, request_timeout_s=1, rollout_retries=3)
        assert completion.retries == 3 and completion.choice["finish_reason"] == "stop"
        assert dict(llm.faults_served) == {"abort": 1, "hang": 1, "drop": 1}
        llm.inject("abort", 3)
        with pytest.raises(EndpointError, match="'abort'"):
            complete(llm.url, rollout_retries=2)


def test_a_request_past_the_timeout_fails_after_its_retries() -> None:
    with ScriptedLLM() as llm:
        llm.inject("hang", 2)
        with pytest.raises(EndpointError, match="Timeout"):
            complete(llm.url, request_timeout_s=0.5, rollout_retries=1)
        assert llm.held == 2
        llm.release()


def test_a_refused_connection_fails_after_its_retries() -> None:
    with ScriptedLLM() as llm:
        complete(llm.url)
        llm.refuse()
        with pytest.raises(EndpointError, match="ConnectError"):
            complete(llm.url, rollout_retries=2)
    with pytest.raises(EndpointError, match="ConnectError"):
        complete(f"http://127.0.0.1:{free_port()}/v1", rollout_retries=0)


def test_the_fixing_agent_alternates_plans_per_task_whatever_the_interleaving() -> None:
    from tests.fakes.agent_scripts import FixingAgent

    agent = FixingAgent()
    tasks = ["Task: calc.add is wrong", "Task: slugify keeps capitals"]
    # Two groups of four starting interleaved so that one global count gives each group only
    # even (or only odd) numbers.
    order = [tasks[0], tasks[1]] * 4
    plans: dict[str, list[str]] = {task: [] for task in tasks}
    for task in order:
        reply = agent(
            [{"role": "system", "content": "sys"}, {"role": "user", "content": task}],
            random.Random(0),
        )
        plans[task].append(reply.split(":")[0])
    assert plans == {task: ["Plan A", "Plan B"] * 2 for task in tasks}
