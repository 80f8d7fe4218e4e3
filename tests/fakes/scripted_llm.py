"""An OpenAI-compatible chat-completions server that plays scripted assistant turns.

Responses look like ART's vLLM: `choices[0]` with `logprobs.content` whose tokens are
`token_id:N`, vLLM's extra fields (`stop_reason`, `token_ids`), and `usage`. The script is the
default agent session: look around, then either call finish() or keep talking. Run it alone with
`python -m tests.fakes.scripted_llm --port 8001`.

Like vLLM's OpenAI server it answers `logprobs` only when the request asks (`logprobs: true`,
`top_logprobs: n`; else `"logprobs": null`), cuts the completion at `max_tokens` /
`max_completion_tokens` (`finish_reason: "length"`), returns `token_ids` only for
`return_token_ids: true`, answers errors in vLLM's `ErrorResponse` shape
(`{"error": {"message", "type", "param", "code"}}`), and speaks HTTP/1.1 with keep-alive.
With `serves` (a predicate on the model name) an unknown `name@step` gets vLLM's 404.

Faults for the fault suite: `inject(kind, times)` makes the next requests answer with vLLM's
`finish_reason: "abort"`, no logprobs, invalid JSON, an HTTP 500, `content: null`, a Qwen3
`<think>` block before the text, vLLM's 400 context-length error, a dropped connection, or hang
until `release()`; `refuse()` closes the listening socket (connections are refused from then on).
`hold(n)` holds the next n requests (`hold_when(body)`: the requests it accepts) until
`release()`, so a test can act while a rollout is provably mid-request (`wait_held(n)`), never
sleeping to synchronise; from another process, `--hold N --control` and `GET /_control`,
`POST /_control/release`.

For benchmarks: `delay_fn` draws each request's delay (seconds) from its own seeded
`random.Random` (`lognormal_delay(median_s, p99_ratio)`: heavy-tailed, seeded by `seed`), and
`busy_seconds()` is the number of requests in flight integrated over time since the start
(request-seconds: with N slots over T seconds, `busy_seconds() / (N * T)` is their occupancy).

For exactness checks: `record=True` keeps every request's messages with the choice it got
(`exchanges`), and `encode` (text -> token ids, e.g. a test tokenizer's) replaces the default
hashed token ids, so what a request returned can be compared token for token with what ART
tokenizes.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import re
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EXPLORE = "Let me look around first.\n```python\nimport os\nprint(sorted(os.listdir('.')))\n```"
FINISH = "The fix is in place.\n```python\nfinish()\n```"
FAULTS = (
    "abort", "no_logprobs", "bad_json", "http_500", "hang", "null_content", "think",
    "context_overflow", "drop",
)  # fmt: skip
THINK = "<think>\nThe user wants a fix. Let me look at the code first.\n</think>\n\n"
DROP = b""  # payload sentinel: close the connection without answering
WANDER = "I am not sure yet; let me think about the problem statement again."


def default_script(messages: list[dict[str, Any]], rng: random.Random) -> str:
    """Turn 1 explores; later turns finish with probability 1/2 (so rewards vary in a group)."""
    turn = sum(m.get("role") == "assistant" for m in messages)
    if turn == 0:
        return EXPLORE
    return FINISH if rng.random() < 0.5 else WANDER


def finish_at_once(messages: list[dict[str, Any]], rng: random.Random) -> str:
    return FINISH


def lognormal_delay(median_s: float, p99_ratio: float = 10.0) -> Callable[[random.Random], float]:
    """Per-request delays, lognormal with median `median_s` and p99 = `p99_ratio` x median."""
    sigma = math.log(p99_ratio) / 2.3263478740408408  # the standard normal's 0.99 quantile
    mu = math.log(median_s)
    return lambda rng: rng.lognormvariate(mu, sigma)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # many rollouts connect at once


def error_body(message: str, err_type: str, code: int) -> dict[str, Any]:
    """vLLM's ErrorResponse (`vllm/entrypoints/openai/protocol.py`: ErrorInfo under `error`)."""
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


CONTEXT_OVERFLOW = error_body(
    "This model's maximum context length is 4096 tokens. However, your request has 5000 input "
    "tokens. Please reduce the length of the input messages.",
    "BadRequestError",
    400,
)


class ScriptedLLM:
    """Threaded HTTP server; `with ScriptedLLM() as llm: llm.url`."""

    def __init__(
        self,
        port: int = 0,
        script: Callable[[list[dict[str, Any]], random.Random], str] = default_script,
        delay_s: float = 0.0,
        fail_when: str | None = None,
        seed: int = 0,
        record: bool = False,
        encode: Callable[[str], list[int]] | None = None,
        decode: Callable[[list[int]], str] | None = None,
        overflow_when: Callable[[list[dict[str, Any]]], bool] | None = None,
        serves: Callable[[str], bool] | None = None,
        hold_when: Callable[[dict[str, Any]], bool] | None = None,
        control: bool = False,
        delay_fn: Callable[[random.Random], float] | None = None,
    ) -> None:
        self.script = script
        self.delay_s = delay_s
        self.delay_fn = delay_fn  # each request's delay, drawn from delay_rng (else delay_s)
        self.delay_rng = random.Random(seed)
        self.fail_when = fail_when  # prompts containing this text get HTTP 503
        # Requests whose messages it accepts get vLLM's 400 "maximum context length" error.
        self.overflow_when = overflow_when
        self.serves = serves  # model names it serves (vLLM: base model + LoRA name@step)
        self.hold_when = hold_when  # requests (bodies) it accepts are held until release()
        self.control = control  # /_control routes, for a test driving it from another process
        self.rng = random.Random(seed)
        self.requests = 0
        self.connections = 0  # TCP connections accepted (keep-alive: fewer than requests)
        self.bodies: list[dict[str, Any]] = []  # every request body, in arrival order
        self.authorizations: set[str] = set()  # Authorization headers seen
        self.in_flight = self.max_in_flight = 0  # requests being answered (now, at most)
        self._busy_s = 0.0  # in_flight integrated over time, up to _busy_at
        self._busy_at = time.monotonic()
        self.models_seen: set[str] = set()
        self.faults_served: collections.Counter[str] = collections.Counter()
        self._faults: collections.deque[str] = collections.deque()
        self._to_hold = 0
        self.held = 0  # requests held so far (by hold() or a hang)
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._held_changed = threading.Condition(self._lock)
        self.record, self.encode, self.decode = record, encode, decode
        self.exchanges: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []  # with record
        self._server = _Server(("127.0.0.1", port), self._handler())
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def __enter__(self) -> ScriptedLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()
        self.refuse()

    def refuse(self) -> None:
        """Stop listening: every new connection is refused from now on (the port stays taken by
        no one, so a worker sees ECONNREFUSED as from a dead vLLM)."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def inject(self, kind: str, times: int = 1) -> None:
        """The next `times` requests get fault `kind` (one of FAULTS), in order."""
        assert kind in FAULTS, kind
        with self._lock:
            self._faults.extend([kind] * times)

    def hold(self, count: int = 1) -> None:
        """Hold the next `count` requests (before answering) until `release()`."""
        with self._lock:
            self._to_hold += count

    def held_at_least(self, count: int) -> bool:
        with self._lock:
            return self.held >= count

    def wait_held(self, count: int, timeout_s: float) -> bool:
        """Block until `count` requests have been held (False after `timeout_s`)."""
        with self._held_changed:
            return self._held_changed.wait_for(lambda: self.held >= count, timeout_s)

    def release(self) -> None:
        self._released.set()

    def busy_seconds(self) -> float:
        """Requests in flight integrated over time (request-seconds) since the server started."""
        with self._lock:
            self._account_busy()
            return self._busy_s

    def _account_busy(self) -> None:  # with _lock held, before in_flight changes
        now = time.monotonic()
        self._busy_s += self.in_flight * (now - self._busy_at)
        self._busy_at = now

    def respond(self, body: dict[str, Any]) -> tuple[int, dict[str, Any] | bytes]:
        messages = body.get("messages") or []
        model = str(body.get("model", ""))
        with self._lock:
            self.requests += 1
            self.bodies.append(body)
            self.models_seen.add(model)
            text = self.script(messages, self.rng)
            delay_s = self.delay_fn(self.delay_rng) if self.delay_fn else self.delay_s
            fault = self._faults.popleft() if self._faults else None
            by_count = self._to_hold > 0 and fault != "hang"
            if by_count:
                self._to_hold -= 1
            by_predicate = self.hold_when is not None and self.hold_when(body)
            hold = fault == "hang" or (not self._released.is_set() and (by_count or by_predicate))
            if hold:
                self.held += 1
                self._held_changed.notify_all()
            if fault:
                self.faults_served[fault] += 1
        if hold:
            self._released.wait(120)
        if self.serves is not None and not self.serves(model):
            return 404, error_body(f"The model `{model}` does not exist.", "NotFoundError", 404)
        if fault == "context_overflow" or (
            self.overflow_when is not None and self.overflow_when(messages)
        ):
            return 400, CONTEXT_OVERFLOW
        if self.fail_when and any(self.fail_when in str(m.get("content")) for m in messages):
            return 503, error_body("scripted outage", "ServiceUnavailableError", 503)
        if delay_s:
            time.sleep(delay_s)
        if fault == "think":
            text = THINK + text
        prompt_tokens = sum(len(str(m.get("content", "")).split()) + 4 for m in messages)
        answer = completion(
            model, text, prompt_tokens, self.encode,
            logprobs=bool(body.get("logprobs")),
            top_logprobs=int(body.get("top_logprobs") or 0),
            max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
            return_token_ids=bool(body.get("return_token_ids")),
            decode=self.decode,
        )  # fmt: skip
        if self.record:
            with self._lock:
                self.exchanges.append((messages, answer["choices"][0]))
        if fault == "http_500":
            return 500, error_body("scripted 500", "InternalServerError", 500)
        if fault == "bad_json":
            return 200, b'{"choices": [{"index": 0, "message": '
        if fault == "drop":
            return 200, DROP
        if fault == "abort":
            answer["choices"][0]["finish_reason"] = "abort"
        if fault == "no_logprobs":
            answer["choices"][0]["logprobs"] = None
        if fault == "null_content":
            answer["choices"][0]["message"]["content"] = None
        return 200, answer

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's uvicorn

            def setup(self) -> None:
                super().setup()
                with outer._lock:
                    outer.connections += 1

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if outer.control and self.path == "/_control/release":
                    outer.release()
                    self._send(200, {"released": True})
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, error_body(f"no route {self.path}", "NotFoundError", 404))
                    return
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    self._send(400, error_body(f"invalid JSON: {exc}", "BadRequestError", 400))
                    return
                with outer._lock:
                    outer.authorizations.add(self.headers.get("Authorization", ""))
                    outer._account_busy()
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    status, payload = outer.respond(body)
                finally:
                    with outer._lock:
                        outer._account_busy()
                        outer.in_flight -= 1
                self._send(status, payload)

            def do_GET(self) -> None:  # noqa: N802
                if outer.control and self.path == "/_control":
                    with outer._lock:
                        state = {"requests": outer.requests, "held": outer.held}
                    self._send(200, state)
                    return
                models = [{"id": m, "object": "model"} for m in sorted(outer.models_seen)]
                self._send(200, {"object": "list", "data": models})

            def _send(self, status: int, payload: dict[str, Any] | bytes) -> None:
                if payload is DROP:
                    self.close_connection = True  # no answer at all: the peer sees EOF
                    return
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    self.close_connection = True  # the client gave up (a hang past its timeout)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def split_text(text: str) -> list[str]:
    """Hashed tokens: pieces whose concatenation is exactly `text` (a word with its spaces)."""
    return re.findall(r"\s*\S+|\s+", text) or [""]


def completion(
    model: str,
    text: str,
    prompt_tokens: int,
    encode: Callable[[str], list[int]] | None = None,
    *,
    logprobs: bool = True,
    top_logprobs: int = 0,
    max_tokens: int | None = None,
    return_token_ids: bool = False,
    decode: Callable[[list[int]], str] | None = None,
) -> dict[str, Any]:
    """A chat completion as ART's vLLM returns it (`--return-tokens-as-token-ids`): with
    `logprobs`, one `token_id:N` entry per generated token; cut at `max_tokens` ("length")."""
    pieces = split_text(text)
    token_ids = [zlib.crc32(p.encode()) % 150_000 for p in pieces]
    if encode is not None:
        token_ids = encode(text)
        pieces = [""] * len(token_ids)  # bytes unknown: ART reads them only for <think>
    finish_reason = "stop"
    if max_tokens is not None and len(token_ids) > int(max_tokens):
        finish_reason, token_ids, pieces = "length", token_ids[:max_tokens], pieces[:max_tokens]
        if encode is None:
            text = "".join(pieces)
        elif decode is None:
            raise ValueError("max_tokens cut an encoded completion: pass decode= too")
        else:
            text = decode(token_ids)
    entries = [
        {
            "token": f"token_id:{t}",
            "logprob": -0.05 * (i % 7),
            "bytes": list(p.encode()),
            "top_logprobs": [
                {"token": f"token_id:{t + k}", "logprob": -0.05 * (i % 7) - k, "bytes": []}
                for k in range(top_logprobs)
            ],
        }
        for i, (t, p) in enumerate(zip(token_ids, pieces, strict=True))
    ]
    choice: dict[str, Any] = {
        "index": 0,
        "message": {
            "role": "assistant", "content": text, "refusal": None, "annotations": None,
            "audio": None, "function_call": None, "tool_calls": [], "reasoning_content": None,
        },
        "logprobs": {"content": entries} if logprobs else None,
        "finish_reason": finish_reason,
        "stop_reason": None,
    }  # fmt: skip
    if return_token_ids:
        choice["token_ids"] = token_ids
    return {
        "id": f"chatcmpl-{zlib.crc32(text.encode()):x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(token_ids),
            "total_tokens": prompt_tokens + len(token_ids),
            "prompt_tokens_details": None,
        },
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--delay-s", type=float, default=0.0)
    parser.add_argument("--hold", type=int, default=0, help="hold the first N requests")
    parser.add_argument(
        "--control", action="store_true",
        help="serve GET /_control (requests, held) and POST /_control/release to a test",
    )  # fmt: skip
    args = parser.parse_args()
    with ScriptedLLM(port=args.port, delay_s=args.delay_s, control=args.control) as llm:
        llm.hold(args.hold)
        print(f"scripted LLM at {llm.url}", flush=True)  # noqa: T201
        threading.Event().wait()


if __name__ == "__main__":
    main()
