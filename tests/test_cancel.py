"""A group the trainer cancelled (`common.queue.cancel_group`): a real worker running it stops its
rollouts at their next turn, grades and posts nothing, leaves no sandbox behind and finishes the
job normally; an attempt still waiting in the queue is never run; sub-agents stop too."""

from __future__ import annotations

import asyncio
import glob
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psutil
import pytest
from redis import Redis
from rq.job import JobStatus

from common import keys
from common.health import ROLLOUT_DIR_PREFIX
from common.queue import cancel_group, enqueue_group, fetch_job, is_group_cancelled, rollout_queue
from common.wire import GradingSpec, RolloutJob
from rollout_workers.cancel import GroupCancellation, RolloutCancelled
from rollout_workers.outcome import RolloutOutcome
from rollout_workers.policy import PolicyClient
from rollout_workers.sub_agents import SubAgents
from tests.conftest import ROOT, Processes, wait_for
from tests.fakes.agent_scripts import is_sub_agent
from tests.fakes.scripted_llm import ScriptedLLM
from tests.jobs import rollout_job
from tests.test_rollout import _workdir

pytestmark = pytest.mark.integration

CODE_EVERY_TURN = "Looking further.\n```python\nprint(len(list_files()))\n```"


def code_every_turn(messages: list, rng: object) -> str:
    return CODE_EVERY_TURN  # never finishes: the rollout runs until it is stopped


class CountingGrader:
    """A stand-in grading service that counts POST /grade and answers 500 (a grading that did
    happen would also post a failed rollout)."""

    def __init__(self) -> None:
        self.gradings = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.gradings += 1
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> CountingGrader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def grader() -> Iterator[CountingGrader]:
    with CountingGrader() as server:
        yield server


def group_job(endpoint: str, grader_url: str = "", **config: Any) -> RolloutJob:
    """Two rollouts of one scenario; with `grader_url`, every rollout would be graded
    (`grade_unfinished`), finished or not."""
    grading = GradingSpec(docker_image="none", expected={}) if grader_url else None
    return rollout_job(
        endpoint, rollouts_per_group=2, grading=grading, grader_url=grader_url,
        grade_unfinished=True, **{"max_steps": 1000, **config},
    )  # fmt: skip


def _status(redis: Redis, job_id: str) -> JobStatus | None:
    job = fetch_job(job_id, redis)
    return None if job is None else job.get_status()


def _stream_length(redis: Redis, job: RolloutJob) -> int:
    return int(redis.xlen(job.results_stream))


def _burst_worker(redis_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollout_workers", "--redis-url", redis_url, "--burst"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_running_group_stops_at_once_grades_and_posts_nothing(
    redis_url: str, processes: Processes, grader: CountingGrader
) -> None:
    redis = Redis.from_url(redis_url)
    queue = rollout_queue("rollouts", redis)
    with ScriptedLLM(script=code_every_turn, delay_s=0.3) as llm:
        job = group_job(llm.url, grader.url)
        enqueue_group(queue, job, timeout_s=300, retries=0)
        worker = processes.worker(redis_url, "cancel")
        wait_for(lambda: llm.requests >= 4, 60, "both rollouts to take turns")
        wait_for(
            lambda: any(p.name() == "bwrap" for p in psutil.Process(worker.pid).children(True)),
            30,
            "the rollouts' sandboxes",
        )
        requests_at_cancel = llm.requests
        cancelled_at = time.monotonic()
        cancel_group(queue, job, ttl_s=60)
        wait_for(
            lambda: _status(redis, job.rq_job_id) == JobStatus.FINISHED,
            10,
            "the cancelled job to finish",
        )
        took_s = time.monotonic() - cancelled_at
        # Each rollout ends its request in flight (0.3 s), then stops before the next one.
        assert llm.requests <= requests_at_cancel + 2
        requests_after = llm.requests
        time.sleep(1.0)
        assert llm.requests == requests_after, "a cancelled rollout kept asking the policy"
    assert took_s < 5, f"the job took {took_s:.1f}s to stop"
    assert fetch_job(job.rq_job_id, redis).return_value() == {
        "posted": 0, "failed": 0, "cancelled": 2,
    }  # fmt: skip
    assert _stream_length(redis, job) == 0
    assert grader.gradings == 0
    assert not redis.exists(keys.posted_rollouts(job.rq_job_id))
    wait_for(lambda: not psutil.Process(worker.pid).children(True), 10, "no sandbox left")
    prefix = os.path.join(tempfile.gettempdir(), f"{ROLLOUT_DIR_PREFIX}{worker.pid}-")
    assert glob.glob(prefix + "*") == [], "a cancelled rollout left its working copy"
    assert worker.poll() is None, "the worker died instead of finishing the job"
    assert processes.logs().count("its group was cancelled") == 1, processes.logs()


def test_a_cancel_during_the_last_turn_means_no_grading_and_no_post(
    redis_url: str, processes: Processes, grader: CountingGrader
) -> None:
    # The rollout ends by --max-steps right after the cancel: it would be graded and posted.
    def second_turn(body: dict[str, Any]) -> bool:
        return sum(m.get("role") == "assistant" for m in body["messages"]) == 1

    redis = Redis.from_url(redis_url)
    queue = rollout_queue("rollouts", redis)
    with ScriptedLLM(script=code_every_turn, hold_when=second_turn) as llm:
        job = group_job(llm.url, grader.url, max_steps=2).model_copy(
            update={"rollouts_per_group": 1}
        )
        enqueue_group(queue, job, timeout_s=300, retries=0)
        processes.worker(redis_url, "last-turn")
        assert llm.wait_held(1, timeout_s=60)
        cancel_group(queue, job, ttl_s=60)
        llm.release()
        wait_for(
            lambda: _status(redis, job.rq_job_id) == JobStatus.FINISHED, 30, "the job to finish"
        )
        assert llm.requests == 2
    assert grader.gradings == 0
    assert _stream_length(redis, job) == 0
    assert fetch_job(job.rq_job_id, redis).return_value()["cancelled"] == 1


def test_attempts_still_waiting_in_the_queue_are_never_run(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    queue = rollout_queue("rollouts", redis)
    with ScriptedLLM(script=code_every_turn) as llm:
        job = group_job(llm.url)
        rerun = job.model_copy(update={"attempt": 1, "rollout_indexes": [1]})
        for attempt in (job, rerun):
            enqueue_group(queue, attempt, timeout_s=300, retries=0)
        cancel_group(queue, job, ttl_s=60)
        assert is_group_cancelled(redis, job.job_id)
        assert queue.count == 0
        worker = _burst_worker(redis_url)
        assert worker.returncode == 0, worker.stderr[-3000:]
        assert llm.requests == 0
    assert _status(redis, job.rq_job_id) == JobStatus.CANCELED
    assert _status(redis, rerun.rq_job_id) == JobStatus.CANCELED
    assert _stream_length(redis, job) == 0


def test_an_attempt_taken_before_the_cancel_landed_runs_nothing(redis_url: str) -> None:
    # A worker took the attempt off the queue between the key being set and RQ's cancel: the
    # job starts, sees the key and ends at once, finished.
    redis = Redis.from_url(redis_url)
    queue = rollout_queue("rollouts", redis)
    with ScriptedLLM(script=code_every_turn) as llm:
        job = group_job(llm.url)
        enqueue_group(queue, job, timeout_s=300, retries=0)
        redis.set(keys.group_cancelled(job.job_id), "1", ex=60)
        worker = _burst_worker(redis_url)
        assert worker.returncode == 0, worker.stderr[-3000:]
        assert llm.requests == 0
    assert _status(redis, job.rq_job_id) == JobStatus.FINISHED
    assert fetch_job(job.rq_job_id, redis).return_value()["cancelled"] == 2
    assert "cancelled before it started" in worker.stderr
    assert _stream_length(redis, job) == 0
    assert not redis.exists(keys.job_lease(job.rq_job_id))


def test_a_sub_agent_stops_at_its_next_turn_once_the_group_is_cancelled(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)

    def sub_agent_looks_forever(messages: list, rng: object) -> str:
        assert is_sub_agent(messages)
        return CODE_EVERY_TURN

    def second_turn(body: dict[str, Any]) -> bool:
        return sum(m.get("role") == "assistant" for m in body["messages"]) == 1

    with ScriptedLLM(script=sub_agent_looks_forever, hold_when=second_turn) as llm:
        job = rollout_job(llm.url)

        def cancel_once_held() -> None:
            if llm.wait_held(1, timeout_s=30):
                redis.set(keys.group_cancelled(job.job_id), "1", ex=60)
            llm.release()

        async def ask() -> None:
            client = PolicyClient(job.policy, job.limits)
            agents = SubAgents(
                client, RolloutOutcome(), 5, _workdir(), 20, 1000,
                cancellation=GroupCancellation(redis, job.job_id),
            )  # fmt: skip
            try:
                await agents("Look around.")
            finally:
                await client.aclose()

        canceller = threading.Thread(target=cancel_once_held)
        canceller.start()
        try:
            with pytest.raises(RolloutCancelled):
                asyncio.run(ask())
        finally:
            canceller.join()
        assert llm.requests == 2  # the held turn ended; no third was asked
