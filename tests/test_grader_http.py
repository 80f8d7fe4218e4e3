"""The grader's HTTP perimeter, in process (no Docker needed: nothing here reaches a grading):
the token is checked before the body is read, bodies are bounded in size and in time."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from grader import server
from grader.container import ContainerLimits
from tests.conftest import free_port, wait_for

TOKEN = "http-test-token-0123456789"


@pytest.fixture
def grader_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(server, "READ_TIMEOUT_S", 1.0)
    monkeypatch.setattr(server, "MAX_BODY_BYTES", 4096)
    state = server.GraderState(
        token=TOKEN, label="http-test", limits=ContainerLimits(), max_concurrent=1, max_queued=0
    )
    port = free_port()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(server.serve(state, "127.0.0.1", port, stop),)
    )
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 10, "the in-process grader")
    yield url
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def _raw(url: str, request: bytes, read_for_s: float = 5.0) -> bytes:
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=read_for_s) as sock:
        sock.sendall(request)
        return sock.recv(65536)


def test_the_token_is_checked_before_the_body_is_read(grader_url: str) -> None:
    # A body announced but never sent: the answer comes at once, from the headers alone.
    started = time.monotonic()
    answer = _raw(
        grader_url,
        b"POST /grade HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
        b"Content-Length: 1000\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 401") and time.monotonic() - started < 1.0
    assert httpx.post(f"{grader_url}/grade", content=b"{}").status_code == 401


def test_bodies_are_bounded_in_size_and_time(grader_url: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    big = httpx.post(f"{grader_url}/grade", content=b"x" * 10_000, headers=auth)
    assert big.status_code == 413
    answer = _raw(
        grader_url,
        b"POST /grade HTTP/1.1\r\nHost: x\r\n" + f"Authorization: Bearer {TOKEN}\r\n".encode()
        + b"Content-Length: 100\r\n\r\n{",
    )  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    bad = httpx.post(f"{grader_url}/grade", content=b"{}", headers=auth)
    assert bad.status_code == 400 and "not a GradeRequest" in bad.text
    assert httpx.get(f"{grader_url}/sleep").status_code == 404
    assert httpx.get(f"{grader_url}/health").json()["max_concurrent"] == 1
