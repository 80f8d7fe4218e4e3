"""The grader's HTTP service: `GET /health`, `POST /grade` (bearer token).

Gradings run on a thread each, at most `max_concurrent` at once; the others wait their turn, up
to `max_queued`, beyond which the service answers 503 (callers retry). A client that disconnects
stops its grading and its container.
"""

from __future__ import annotations

import hmac
import json
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError

from common.grading import GradeError, GradeReport, GradeRequest, GradeTimings
from grader.container import ContainerLimits, GradingFailure, run_hidden_tests

log = logging.getLogger(__name__)

LOG_TAIL_CHARS = 4000
_STATUS_OF_FAILURE = {
    "image_missing": 424,
    "patch_failed": 422,
    "engine_error": 503,
    "cancelled": 499,
}


@dataclass
class GraderState:
    token: str
    label: str
    limits: ContainerLimits
    max_concurrent: int
    max_queued: int
    slots: threading.BoundedSemaphore = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: int = 0
    waiting: int = 0
    graded: int = 0

    def __post_init__(self) -> None:
        self.slots = threading.BoundedSemaphore(self.max_concurrent)


class GraderServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], state: GraderState) -> None:
        super().__init__(address, _Handler)
        self.state = state


class _Handler(BaseHTTPRequestHandler):
    server: GraderServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.rstrip("/") != "/health":
            self._error(404, "bad_request", f"no route {self.path}: use GET /health or POST /grade")
            return
        state = self.server.state
        self._send(
            200,
            {
                "status": "ok",
                "running": state.running,
                "waiting": state.waiting,
                "graded": state.graded,
                "max_concurrent": state.max_concurrent,
            },
        )

    def do_POST(self) -> None:  # noqa: N802
        state = self.server.state
        if self.path.rstrip("/") != "/grade":
            self._error(404, "bad_request", f"no route {self.path}: use POST /grade")
            return
        supplied = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(supplied.encode(), state.token.encode()):
            self._error(401, "unauthorized", "missing or wrong bearer token: set GRADER_TOKEN")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            request = GradeRequest.model_validate_json(self.rfile.read(length))
        except (ValueError, ValidationError) as exc:
            self._error(400, "bad_request", f"not a GradeRequest: {str(exc)[:500]}")
            return
        received = time.monotonic()
        if not state.slots.acquire(blocking=False):
            with state.lock:
                if state.waiting >= state.max_queued:
                    self._error(
                        503, "busy", f"{state.waiting} gradings already waiting; retry later"
                    )
                    return
                state.waiting += 1
            try:
                state.slots.acquire()
            finally:
                with state.lock:
                    state.waiting -= 1
        try:
            with state.lock:
                state.running += 1
            self._grade(request, received)
        finally:
            with state.lock:
                state.running -= 1
            state.slots.release()

    def _grade(self, request: GradeRequest, received: float) -> None:
        state = self.server.state
        started = time.monotonic()
        cancelled = threading.Event()
        watcher = threading.Thread(
            target=_watch_disconnect, args=(self.connection, cancelled), daemon=True
        )
        watcher.start()
        try:
            run = run_hidden_tests(
                request.docker_image,
                request.diff,
                request.timeout_s,
                state.limits,
                state.label,
                cancelled,
            )
        except GradingFailure as failure:
            log.warning("grading %s failed: %s: %s", request.instance_id, failure.kind, failure)
            if failure.kind != "cancelled":
                self._error(_STATUS_OF_FAILURE.get(failure.kind, 500), failure.kind, str(failure))
            return
        finally:
            cancelled.set()  # also stops the watcher
        report = GradeReport(
            instance_id=request.instance_id,
            statuses=run.statuses,
            timed_out=run.timed_out,
            exit_code=run.exit_code,
            tampered=bool(run.tamper),
            tamper=run.tamper,
            log_tail=run.log[-LOG_TAIL_CHARS:],
            timings=GradeTimings(
                total_s=time.monotonic() - started, queued_s=started - received, tests_s=run.tests_s
            ),
        )
        with state.lock:
            state.graded += 1
        self._send(200, report.model_dump())

    def _error(self, status: int, kind: str, message: str) -> None:
        self._send(status, {"error": GradeError(type=kind, message=message).model_dump()})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            log.info("client went away before the answer (%d)", status)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


def _watch_disconnect(connection: socket.socket, stop: threading.Event) -> None:
    """Set `stop` when the client closes its end (a readable socket with nothing to read)."""
    while not stop.is_set():
        try:
            readable, _, _ = select.select([connection], [], [], 0.5)
            if readable and connection.recv(1, socket.MSG_PEEK) == b"":
                log.info("client disconnected; cancelling its grading")
                stop.set()
        except (OSError, ValueError):
            stop.set()
