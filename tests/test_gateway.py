"""The inference gateway passes requests through unchanged, checks its token, and makes
workers wait while the policy trains."""

from __future__ import annotations

import asyncio
import threading

import httpx

from common.wire import PolicyRef, RolloutLimits
from rollout_workers.policy import PolicyClient
from tests.conftest import wait_for
from tests.fakes.scripted_llm import ScriptedLLM
from trainer.gateway import Gateway

TOKEN = "gateway-token-0123456789"
LIMITS = RolloutLimits(
    max_steps=1, max_context_tokens=1000, max_completion_tokens=16, code_timeout_s=5,
    max_output_chars=100, request_timeout_s=60, rollout_retries=0, retry_backoff_s=0.05,
)  # fmt: skip
BODY = {"model": "r2e-rlm@3", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}


def test_requests_pass_through_unchanged_with_the_token() -> None:
    with ScriptedLLM() as llm:
        gateway = Gateway(("127.0.0.1", 0), llm.url, TOKEN, upstream_key="vllm-key")
        gateway.start()
        try:
            direct = httpx.post(f"{llm.url}/chat/completions", json=BODY).json()
            through = httpx.post(
                f"{gateway.url}/v1/chat/completions", json=BODY,
                headers={"Authorization": f"Bearer {TOKEN}"},
            )  # fmt: skip
            refused = httpx.post(f"{gateway.url}/v1/chat/completions", json=BODY)
        finally:
            gateway.stop()
    assert through.status_code == 200
    assert through.json()["choices"] == direct["choices"]  # logprobs, token ids, extra fields
    assert through.json()["choices"][0]["logprobs"]["content"][0]["token"].startswith("token_id:")
    assert llm.models_seen == {"r2e-rlm@3"}
    assert refused.status_code == 401


def test_workers_wait_while_the_policy_trains() -> None:
    with ScriptedLLM() as llm:
        gateway = Gateway(("127.0.0.1", 0), llm.url, TOKEN, upstream_key="", retry_after_s=0.05)
        gateway.start()
        gateway.sleeping.set()
        policy = PolicyRef(
            inference_name="m@0", policy_step=0, endpoint=f"{gateway.url}/v1", api_key=TOKEN
        )
        outcome: list[object] = []

        async def ask() -> None:
            client = PolicyClient(policy, LIMITS)
            try:
                outcome.append(await client.complete([{"role": "user", "content": "hi"}]))
            finally:
                await client.aclose()

        worker = threading.Thread(target=lambda: asyncio.run(ask()))
        worker.start()
        wait_for(lambda: gateway.turned_away >= 3, 10, "requests turned away while training")
        assert outcome == []  # still waiting, although it has no retries to spend
        gateway.sleeping.clear()
        worker.join(10)
        gateway.stop()
    [completion] = outcome
    assert completion.choice["logprobs"]["content"]
