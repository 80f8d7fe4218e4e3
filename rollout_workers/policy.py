"""Client of the policy's OpenAI-compatible endpoint, over plain httpx.

The raw `choices[0]` JSON of each response is returned untouched: the trainer rebuilds the
`Choice` objects ART trains on. Infrastructure errors (connection, timeout, 5xx, 429, model not
loaded yet) and responses the trainer could not train on (an unknown finish_reason such as vLLM's
"abort", no logprobs, bad JSON) are retried with exponential backoff, then raised as
EndpointError.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import httpx
import msgspec

from common.errors import EndpointError
from common.garbage import freeze_heap, no_gc
from common.tls import tls_context
from common.wire import PolicyRef, RolloutLimits

log = logging.getLogger(__name__)

SLEEPING_HEADER = "X-Policy-Sleeping"  # set by the trainer's gateway while it trains


# What the trainer can train on (OpenAI's values); vLLM answers "abort" for aborted requests.
TRAINABLE_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "function_call"})


class ContextOverflow(Exception):
    """The endpoint refused the prompt as too long: a model outcome, never retried."""


@dataclass(frozen=True)
class Completion:
    choice: dict[str, Any]  # raw choices[0]
    prompt_tokens: int
    completion_tokens: int
    retries: int

    @property
    def content(self) -> str:
        return (self.choice.get("message") or {}).get("content") or ""


def check_choice(choice: Any) -> None:
    """Raise EndpointError unless `choice` is one the trainer can rebuild and train on: a known
    finish_reason, an assistant message, and logprobs for every token. Checked before the
    rollout goes on, so a bad response is retried, never posted."""
    if not isinstance(choice, dict):
        raise EndpointError(f"policy returned a choice that is not an object: {choice!r:.200}")
    reason = choice.get("finish_reason")
    if reason not in TRAINABLE_FINISH_REASONS:
        raise EndpointError(f"policy finished with finish_reason {reason!r}: not trainable")
    message = choice.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("content") or "", str):
        raise EndpointError("policy returned a choice without an assistant message")
    content = (choice.get("logprobs") or {}).get("content")
    if not isinstance(content, list) or not content:
        raise EndpointError("policy returned a choice without logprobs")
    if _plain_json_tokens(content):
        return
    for token in content:
        if not (
            isinstance(token, dict)
            and isinstance(token.get("token"), str)
            and isinstance(token.get("logprob"), int | float)
        ):
            raise EndpointError(f"policy returned a malformed logprob entry: {token!r:.200}")


_TOKEN = itemgetter("token")
_LOGPROB = itemgetter("logprob")


def _plain_json_tokens(content: list[Any]) -> bool:
    """The per-token check in C-level loops for what JSON gives (exact dict, str and number
    types); anything else, a missing key included, is left to the loop that says what is wrong.
    (itemgetter costs a third of methodcaller("get"): ~0.1 against 0.3-0.45 us a token.)"""
    if set(map(type, content)) != {dict}:
        return False
    try:
        tokens, logprobs = (
            set(map(type, map(_TOKEN, content))),
            set(map(type, map(_LOGPROB, content))),
        )
    except KeyError:
        return False
    return tokens == {str} and logprobs <= {float, int}


_JSON = msgspec.json.Decoder()


def parse_json(body: bytes) -> Any:
    """What `json.loads(body)` gives, at a third of its cost on a completion (~0.4 against 1.2 us
    a token): msgspec's decoder, correctly rounded like json's. What only Python's json accepts
    (NaN, Infinity, numbers out of float range, lone surrogates, UTF-16) msgspec refuses with a
    ValueError (a DecodeError or a UnicodeDecodeError), and json.loads decides."""
    try:
        return _JSON.decode(body)
    except ValueError:
        return json.loads(body)


def warm_up() -> None:
    httpx.AsyncClient(verify=tls_context())  # first client builds httpx's lazy internals
    freeze_heap()  # start-up's objects out of the cycle collector's way (common.garbage)


class PolicyClient:
    def __init__(self, policy: PolicyRef, limits: RolloutLimits) -> None:
        self.policy = policy
        self.limits = limits
        headers = {"Authorization": f"Bearer {policy.api_key}"} if policy.api_key else {}
        self._client = httpx.AsyncClient(
            base_url=policy.endpoint.rstrip("/"),
            headers=headers,
            verify=tls_context(),
            timeout=httpx.Timeout(limits.request_timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def complete(self, messages: list[dict[str, Any]]) -> Completion:
        body = {
            "model": self.policy.inference_name,
            "messages": messages,
            "max_tokens": self.limits.max_completion_tokens,
            "logprobs": True,
        }
        delay = self.limits.retry_backoff_s
        sleeping_until = time.monotonic() + self.limits.request_timeout_s
        attempt = 0
        while True:
            try:
                response = await self._client.post("/chat/completions", json=body)
                if response.status_code == 503 and response.headers.get(SLEEPING_HEADER) == "1":
                    # The policy is training (the gateway says so): wait, do not spend a retry.
                    if time.monotonic() > sleeping_until:
                        raise EndpointError("the policy kept training past --request-timeout-s")
                    await asyncio.sleep(float(response.headers.get("Retry-After", "5")))
                    continue
                return self._parse(response, attempt)
            except EndpointError as exc:
                if attempt == self.limits.rollout_retries:
                    raise
                log.warning(
                    "policy request failed (%s); retry %d in %.1fs", exc, attempt + 1, delay
                )
            except httpx.HTTPError as exc:
                if attempt == self.limits.rollout_retries:
                    raise EndpointError(f"{self.policy.endpoint}: {exc!r}") from exc
                log.warning("policy unreachable (%r); retry %d in %.1fs", exc, attempt + 1, delay)
            await asyncio.sleep(delay)
            delay *= 2
            attempt += 1

    def _parse(self, response: httpx.Response, retries: int) -> Completion:
        if response.status_code == 400 and "context" in response.text.lower():
            raise ContextOverflow(response.text[:500])
        if response.status_code != 200:
            raise EndpointError(f"HTTP {response.status_code} from policy: {response.text[:300]}")
        try:
            with no_gc():  # ~10 objects a token: the collector would sweep the heap many times
                payload = parse_json(response.content)
            choice = payload["choices"][0]
            usage = payload.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError, RecursionError) as exc:
            raise EndpointError(f"policy returned a malformed completion: {exc!r}") from exc
        check_choice(choice)
        return Completion(
            choice=choice,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            retries=retries,
        )
