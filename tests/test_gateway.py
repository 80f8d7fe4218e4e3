"""The inference gateway passes requests through unchanged, checks its token, and makes
workers wait while the policy trains."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from common.wire import PolicyRef
from rollout_workers.policy import PolicyClient
from tests.conftest import wait_for
from tests.fakes.scripted_llm import ScriptedLLM
from tests.jobs import rollout_limits
from trainer.gateway import Gateway
from trainer.services import free_port

TOKEN = "gateway-token-0123456789"
LIMITS = rollout_limits(max_completion_tokens=16, request_timeout_s=60, retry_backoff_s=0.05)
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


def _ask_in_a_thread(gateway: Gateway, outcome: list[object]) -> threading.Thread:
    policy = PolicyRef(
        inference_name="m@0", policy_step=0, endpoint=f"{gateway.url}/v1", api_key=TOKEN
    )

    async def ask() -> None:
        client = PolicyClient(policy, LIMITS)
        try:
            outcome.append(await client.complete([{"role": "user", "content": "hi"}]))
        finally:
            await client.aclose()

    worker = threading.Thread(target=lambda: asyncio.run(ask()))
    worker.start()
    return worker


def test_requests_are_held_while_the_policy_trains_and_go_through_when_it_wakes() -> None:
    with ScriptedLLM() as llm:
        gateway = Gateway(("127.0.0.1", 0), llm.url, TOKEN, upstream_key="", hold_s=30)
        gateway.start()
        gateway.sleep()
        outcome: list[object] = []
        worker = _ask_in_a_thread(gateway, outcome)
        wait_for(lambda: gateway.held >= 1, 10, "a request held while training")
        assert outcome == [] and llm.requests == 0, "nothing reaches a sleeping policy"
        gateway.wake()
        worker.join(10)
        gateway.stop()
    [completion] = outcome
    assert completion.choice["logprobs"]["content"]
    assert gateway.turned_away == 0 and llm.requests == 1


def test_workers_wait_while_the_policy_trains_past_the_hold() -> None:
    with ScriptedLLM() as llm:
        gateway = Gateway(
            ("127.0.0.1", 0), llm.url, TOKEN, upstream_key="", retry_after_s=0.05, hold_s=0.1
        )
        gateway.start()
        gateway.sleep()
        outcome: list[object] = []
        worker = _ask_in_a_thread(gateway, outcome)
        wait_for(lambda: gateway.turned_away >= 3, 10, "requests turned away while training")
        assert outcome == []  # still waiting, although it has no retries to spend
        gateway.wake()
        worker.join(10)
        gateway.stop()
    [completion] = outcome
    assert completion.choice["logprobs"]["content"]


# --- The perimeter: nothing a client sends is trusted ---------------------------------------


class RecordingUpstream:
    """A policy stand-in that records every request target it receives and answers 200."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.paths.append(self.path)
                self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                data = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer  # noqa: N815 (http.server's naming)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> RecordingUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def running(upstream: str, **options: Any) -> Iterator[Gateway]:
    gateway = Gateway(("127.0.0.1", 0), upstream, TOKEN, upstream_key="vllm-key", **options)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def raw(gateway: Gateway, request: bytes, timeout_s: float = 10) -> bytes:
    """Send bytes as they are (no client normalises the path) and read until the gateway closes
    the connection; a gateway that waits for more (or reads the rest) raises TimeoutError here."""
    with socket.create_connection(gateway.server_address, timeout=timeout_s) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def head(target: str, length: int, auth: bool, extra: str = "") -> bytes:
    authorization = f"Authorization: Bearer {TOKEN}\r\n" if auth else ""
    return (
        f"POST {target} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{authorization}{extra}\r\n"
    ).encode()


def test_a_huge_body_without_the_token_is_refused_unread() -> None:
    # 10 GiB announced, 64 KiB sent: the old gateway read the body before the token, so it
    # waited for the rest and this timed out.
    # Closed at once: a server that drains ("lingers on") the unread body would not close.
    with RecordingUpstream() as upstream, running(upstream.url) as gateway:
        began = time.monotonic()
        refused = raw(gateway, head("/v1/chat/completions", 10 << 30, auth=False) + b"x" * 65536)
        expect = raw(
            gateway,
            head("/v1/chat/completions", 10 << 30, False, "Expect: 100-continue\r\n"),
        )
        assert time.monotonic() - began < 5
    assert status_of(refused) == 401
    assert status_of(expect) == 401 and b"100 Continue" not in expect
    assert upstream.paths == []


def test_a_client_with_the_token_is_invited_to_send_its_body() -> None:
    body = json.dumps(BODY).encode()
    with (
        RecordingUpstream() as upstream,
        running(upstream.url) as gateway,
        socket.create_connection(gateway.server_address, timeout=10) as sock,
    ):
        sock.sendall(head("/v1/chat/completions", len(body), True, "Expect: 100-continue\r\n"))
        invited = sock.recv(65536)
        sock.sendall(body)
        answer = sock.recv(65536)
    assert invited == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert status_of(answer) == 200 and upstream.paths == ["/v1/chat/completions"]


def test_bodies_are_bounded() -> None:
    with RecordingUpstream() as upstream, running(upstream.url, max_body_bytes=1024) as gateway:
        announced = raw(gateway, head("/v1/chat/completions", 1025, auth=True))  # nothing sent
        chunks = (b'{"pad": "' + b"y" * 4096 + b'"}' for _ in range(1))
        chunked = httpx.post(
            f"{gateway.url}/v1/chat/completions", content=chunks,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )  # fmt: skip
        small = httpx.post(
            f"{gateway.url}/v1/chat/completions", json=BODY,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )  # fmt: skip
    assert status_of(announced) == 413
    assert chunked.status_code == 413
    assert small.status_code == 200
    assert upstream.paths == ["/v1/chat/completions"]


TRAVERSALS = [
    "/sleep", "/wake_up", "/v1/../sleep", "/v1/%2e%2e/sleep", "/v1/%2E%2E/wake_up",
    "/v1/..%2fsleep", "/v1%2f..%2fsleep", "/v1/chat/completions/../../sleep",
    "/v1/chat/completions%2f..%2f..%2fsleep", "/v1/./../sleep", "//sleep", "/%2e%2e/sleep",
    "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/v1/%252e%252e/sleep",
    "/v1/chat/completions/..%5c..%5csleep", "/v1/chat/completions%00/../../sleep",
    "http://127.0.0.1/sleep", "/v1/embeddings", "/metrics",
]  # fmt: skip


def test_only_the_inference_routes_reach_the_policy() -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with RecordingUpstream() as upstream, running(upstream.url) as gateway:
        refused = {}
        for target in TRAVERSALS:
            connection = http.client.HTTPConnection(*gateway.server_address, timeout=10)
            connection.request("POST", target, body=b"{}", headers=auth)  # sent as written
            refused[target] = connection.getresponse().status
            connection.close()
        allowed = []
        for method, target in [
            ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"),
            ("POST", "/v1//chat/completions?x=/sleep"), ("POST", "/v1/./completions"),
        ]:  # fmt: skip
            connection = http.client.HTTPConnection(*gateway.server_address, timeout=10)
            connection.request(method, target, body=b"{}" if method == "POST" else None,
                               headers=auth)  # fmt: skip
            allowed.append(connection.getresponse().status)
            connection.close()
        wrong_method = httpx.get(f"{gateway.url}/v1/chat/completions", headers=auth)
    assert refused == dict.fromkeys(TRAVERSALS, 404)
    assert allowed == [200] * 5
    assert wrong_method.status_code == 405
    # Only canonical routes were forwarded, never a client's string (nor its query).
    assert upstream.paths == [
        "/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/chat/completions",
        "/v1/completions",
    ]  # fmt: skip


def test_a_slow_body_or_header_is_cut_off() -> None:
    with (
        RecordingUpstream() as upstream,
        running(upstream.url, read_timeout_s=0.5, idle_timeout_s=0.5) as gateway,
    ):
        began = time.monotonic()
        slow_body = raw(gateway, head("/v1/chat/completions", 100, auth=True) + b'{"a":')
        slow_header = raw(gateway, b"POST /v1/chat/completions HTTP/1.1\r\nHost: gate")
        elapsed = time.monotonic() - began
    assert status_of(slow_body) == 408
    assert slow_header == b""  # closed without an answer
    assert elapsed < 8
    assert upstream.paths == []


def test_upstream_calls_have_a_time_limit() -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with ScriptedLLM(delay_s=5) as llm, running(llm.url, upstream_timeout_s=0.3) as gateway:
        began = time.monotonic()
        hung = httpx.post(f"{gateway.url}/v1/chat/completions", json=BODY, headers=auth)
        elapsed = time.monotonic() - began
    with running(f"http://127.0.0.1:{free_port()}/v1") as gateway:
        down = httpx.post(f"{gateway.url}/v1/chat/completions", json=BODY, headers=auth)
    assert hung.status_code == 504 and elapsed < 4
    assert down.status_code == 502
