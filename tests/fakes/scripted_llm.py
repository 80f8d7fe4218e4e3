"""An OpenAI-compatible chat-completions server that plays scripted assistant turns.

Responses look like ART's vLLM: `choices[0]` with `logprobs.content` whose tokens are
`token_id:N`, vLLM's extra fields (`stop_reason`, `token_ids`), and `usage`. The script is the
default agent session: look around, then either call finish() or keep talking. Run it alone with
`python -m tests.fakes.scripted_llm --port 8001`.

Faults for the fault suite: `inject(kind, times)` makes the next requests answer with vLLM's
`finish_reason: "abort"`, no logprobs, invalid JSON, an HTTP 500, or hang until `release()`;
`hold(n)` holds the next n requests until `release()`, so a test can act while a rollout is
provably mid-request (`wait_held(n)`), never sleeping to synchronise.

For exactness checks: `record=True` keeps every request's messages with the choice it got
(`exchanges`), and `encode` (text -> token ids, e.g. a test tokenizer's) replaces the default
hashed token ids, so what a request returned can be compared token for token with what ART
tokenizes.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EXPLORE = "Let me look around first.\n```python\nimport os\nprint(sorted(os.listdir('.')))\n```"
FINISH = "The fix is in place.\n```python\nfinish()\n```"
FAULTS = ("abort", "no_logprobs", "bad_json", "http_500", "hang")
WANDER = "I am not sure yet; let me think about the problem statement again."


def default_script(messages: list[dict[str, Any]], rng: random.Random) -> str:
    """Turn 1 explores; later turns finish with probability 1/2 (so rewards vary in a group)."""
    turn = sum(m.get("role") == "assistant" for m in messages)
    if turn == 0:
        return EXPLORE
    return FINISH if rng.random() < 0.5 else WANDER


def finish_at_once(messages: list[dict[str, Any]], rng: random.Random) -> str:
    return FINISH


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # many rollouts connect at once


class ScriptedLLM:
    """Threaded HTTP server; `with ScriptedLLM() as llm: llm.url`."""

    def __init__(
        self,
        port: int = 0,
        script=default_script,
        delay_s: float = 0.0,
        fail_when: str | None = None,
        seed: int = 0,
        record: bool = False,
        encode: Callable[[str], list[int]] | None = None,
        overflow_when: Callable[[list[dict[str, Any]]], bool] | None = None,
    ) -> None:
        self.script = script
        self.delay_s = delay_s
        self.fail_when = fail_when  # prompts containing this text get HTTP 503
        # Requests whose messages it accepts get vLLM's 400 "maximum context length" error.
        self.overflow_when = overflow_when
        self.rng = random.Random(seed)
        self.requests = 0
        self.models_seen: set[str] = set()
        self.faults_served: collections.Counter[str] = collections.Counter()
        self._faults: collections.deque[str] = collections.deque()
        self._to_hold = 0
        self.held = 0  # requests held so far (by hold() or a hang)
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._held_changed = threading.Condition(self._lock)
        self.record, self.encode = record, encode
        self.exchanges: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []  # with record
        self._server = _Server(("127.0.0.1", port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ScriptedLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()
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

    def respond(self, body: dict[str, Any]) -> tuple[int, dict[str, Any] | bytes]:
        messages = body.get("messages") or []
        with self._lock:
            self.requests += 1
            self.models_seen.add(body.get("model", ""))
            text = self.script(messages, self.rng)
            fault = self._faults.popleft() if self._faults else None
            hold = fault == "hang" or (self._to_hold > 0 and not self._released.is_set())
            if self._to_hold > 0 and fault != "hang":
                self._to_hold -= 1
            if hold:
                self.held += 1
                self._held_changed.notify_all()
            if fault:
                self.faults_served[fault] += 1
        if hold:
            self._released.wait(120)
        if self.overflow_when is not None and self.overflow_when(messages):
            return 400, {
                "object": "error",
                "message": "This model's maximum context length is 4096 tokens. However, you "
                "requested 5000 tokens. Please reduce the length of the messages or completion.",
                "type": "BadRequestError",
                "code": 400,
            }
        if self.fail_when and any(self.fail_when in str(m.get("content")) for m in messages):
            return 503, {"error": {"message": "scripted outage", "type": "server_error"}}
        if self.delay_s:
            time.sleep(self.delay_s)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) + 4 for m in messages)
        answer = completion(body.get("model", ""), text, prompt_tokens, self.encode)
        if self.record:
            with self._lock:
                self.exchanges.append((messages, answer["choices"][0]))
        if fault == "http_500":
            return 500, {"error": {"message": "scripted 500", "type": "server_error"}}
        if fault == "bad_json":
            return 200, b'{"choices": [{"index": 0, "message": '
        if fault == "abort":
            answer["choices"][0]["finish_reason"] = "abort"
        if fault == "no_logprobs":
            answer["choices"][0]["logprobs"] = None
        return 200, answer

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                length = int(self.headers.get("Content-Length", 0))
                status, payload = outer.respond(json.loads(self.rfile.read(length)))
                self._send(status, payload)

            def do_GET(self) -> None:  # noqa: N802
                self._send(
                    200, {"object": "list", "data": [{"id": m} for m in sorted(outer.models_seen)]}
                )

            def _send(self, status: int, payload: dict[str, Any] | bytes) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (a hang past its timeout)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def completion(
    model: str, text: str, prompt_tokens: int, encode: Callable[[str], list[int]] | None = None
) -> dict[str, Any]:
    """A chat completion as ART's vLLM returns it: token_id tokens with logprobs."""
    pieces = [p for p in text.replace("\n", " \n ").split(" ") if p] or [""]
    token_ids = [zlib.crc32(p.encode()) % 150_000 for p in pieces]
    if encode is not None:
        token_ids = encode(text)
        pieces = [""] * len(token_ids)  # bytes unknown: ART reads them only for <think>
    logprobs = [
        {
            "token": f"token_id:{t}",
            "logprob": -0.05 * (i % 7),
            "bytes": list(p.encode()),
            "top_logprobs": [],
        }
        for i, (t, p) in enumerate(zip(token_ids, pieces, strict=True))
    ]
    return {
        "id": f"chatcmpl-{zlib.crc32(text.encode()):x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": None},
                "logprobs": {"content": logprobs},
                "finish_reason": "stop",
                "stop_reason": None,
                "token_ids": token_ids,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(token_ids),
            "total_tokens": prompt_tokens + len(token_ids),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--delay-s", type=float, default=0.0)
    args = parser.parse_args()
    with ScriptedLLM(port=args.port, delay_s=args.delay_s) as llm:
        print(f"scripted LLM at {llm.url}", flush=True)  # noqa: T201
        threading.Event().wait()


if __name__ == "__main__":
    main()
