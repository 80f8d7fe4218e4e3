"""The grader's HTTP service on aiohttp: `GET /health`, `POST /grade` (bearer token).

The token is checked from the headers before a byte of the body is read; bodies are bounded
(`MAX_BODY_BYTES`) and must arrive within `READ_TIMEOUT_S`; a connection that completes no
request header within `IDLE_TIMEOUT_S` is closed. Gradings run on a thread each, at most
`max_concurrent` at once; the others wait their turn, up to `max_queued`, beyond which the
service answers 503 (callers retry). A client that disconnects cancels its handler, which stops
its grading and removes its container.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import ValidationError

from common.grading import GradeError, GradeReport, GradeRequest, GradeTimings
from grader.container import ContainerLimits, GradingFailure, TestRun, run_hidden_tests

log = logging.getLogger(__name__)

LOG_TAIL_CHARS = 4000
MAX_BODY_BYTES = 32 << 20  # a diff with binary files in it stays well under this
READ_TIMEOUT_S = 60.0  # to receive one request body
IDLE_TIMEOUT_S = 75.0  # also bounds a request header that trickles in (slowloris)
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
    running: int = 0
    waiting: int = 0
    graded: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # the counters, across threads
    # Grading slots. A slot is released when the grading's thread ends, not when its handler
    # does: a cancelled grading still holds its container until it is removed.
    slots: threading.BoundedSemaphore = field(init=False)
    executor: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.slots = threading.BoundedSemaphore(self.max_concurrent)
        self.executor = ThreadPoolExecutor(self.max_concurrent + self.max_queued + 1, "grading")


def _error(status: int, kind: str, message: str) -> web.Response:
    body = {"error": GradeError(type=kind, message=message).model_dump()}
    return web.json_response(body, status=status)


def _refuse(response: web.Response) -> web.Response:
    response.force_close()  # its unread body, if any, is never read
    return response


class _Service:
    def __init__(self, state: GraderState) -> None:
        self.state = state
        self.token = state.token.encode()

    def _authorised(self, request: web.BaseRequest) -> bool:
        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(supplied.encode(), self.token)

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: invite the body only from a client with the token."""
        if not self._authorised(request):
            return _refuse(_error(401, "unauthorized", "missing or wrong bearer token"))
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _refuse(_error(413, "bad_request", f"body over {MAX_BODY_BYTES} bytes"))
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def health(self, request: web.Request) -> web.Response:
        state = self.state
        return web.json_response(
            {
                "status": "ok",
                "running": state.running,
                "waiting": state.waiting,
                "graded": state.graded,
                "max_concurrent": state.max_concurrent,
            }
        )

    async def grade(self, request: web.Request) -> web.Response:
        state = self.state
        if not self._authorised(request):  # before a byte of the body is read
            return _refuse(
                _error(401, "unauthorized", "missing or wrong bearer token: set GRADER_TOKEN")
            )
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _refuse(_error(413, "bad_request", f"body over {MAX_BODY_BYTES} bytes"))
        try:
            body = await asyncio.wait_for(request.read(), READ_TIMEOUT_S)
            grade_request = GradeRequest.model_validate_json(body)
        except web.HTTPRequestEntityTooLarge:  # a chunked body past the limit
            return _refuse(_error(413, "bad_request", f"body over {MAX_BODY_BYTES} bytes"))
        except TimeoutError:
            return _refuse(_error(408, "bad_request", "the request body arrived too slowly"))
        except (ValueError, ValidationError) as exc:
            return _error(400, "bad_request", f"not a GradeRequest: {str(exc)[:500]}")
        if state.running >= state.max_concurrent and state.waiting >= state.max_queued:
            return _error(503, "busy", f"{state.waiting} gradings already waiting; retry later")
        received = time.monotonic()
        cancelled = threading.Event()
        with state.lock:
            state.waiting += 1
        future = asyncio.get_running_loop().run_in_executor(
            state.executor, self._run, grade_request, received, cancelled
        )
        # Outlives a cancelled handler: its outcome (usually "cancelled") is collected here.
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            run, started = await asyncio.shield(future)
        except asyncio.CancelledError:  # the client went away: stop the grading, free the slot
            log.info("client disconnected; cancelling the grading of %s", grade_request.instance_id)
            cancelled.set()
            raise
        except GradingFailure as failure:
            log.warning(
                "grading %s failed: %s: %s", grade_request.instance_id, failure.kind, failure
            )
            return _error(_STATUS_OF_FAILURE.get(failure.kind, 500), failure.kind, str(failure))
        finally:
            cancelled.set()  # a grading that is still waiting for a slot gives up
        report = GradeReport(
            instance_id=grade_request.instance_id,
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
        if run.tamper:
            log.warning("%s: tampering diff, paid 0: %s", grade_request.instance_id, run.tamper)
        with state.lock:
            state.graded += 1
        return web.json_response(report.model_dump())

    def _run(
        self, request: GradeRequest, received: float, cancelled: threading.Event
    ) -> tuple[TestRun, float]:
        """On a grading thread: wait for a slot (or cancellation), then grade."""
        state = self.state
        try:
            while not state.slots.acquire(timeout=0.2):
                if cancelled.is_set():
                    raise GradingFailure("cancelled", "the client went away while waiting")
        finally:
            with state.lock:
                state.waiting -= 1
        with state.lock:
            state.running += 1
        try:
            started = time.monotonic()
            run = run_hidden_tests(
                request.docker_image,
                request.diff,
                request.timeout_s,
                state.limits,
                state.label,
                cancelled,
            )
            return run, started
        finally:
            with state.lock:
                state.running -= 1
            state.slots.release()


async def not_found(request: web.Request) -> web.Response:
    return _refuse(
        _error(404, "bad_request", f"no route {request.path}: use GET /health or POST /grade")
    )


def make_app(state: GraderState) -> web.Application:
    service = _Service(state)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/health", service.health)
    app.router.add_post("/grade", service.grade, expect_handler=service.expect)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


async def serve(state: GraderState, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve until `stop` is set."""
    runner = web.AppRunner(
        make_app(state),
        handle_signals=False,
        access_log=None,
        keepalive_timeout=IDLE_TIMEOUT_S,
        lingering_time=0,  # never read a refused request's body to keep the connection
        shutdown_timeout=5.0,
        handler_cancellation=True,  # a client that goes away cancels its grading
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=256).start()
        log.info("grader on %s:%d, %d at once", host, port, state.max_concurrent)
        await stop.wait()
    finally:
        await runner.cleanup()
        state.executor.shutdown(wait=False, cancel_futures=True)
