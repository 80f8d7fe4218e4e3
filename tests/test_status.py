"""`python -m trainer.status` tells the truth: a live run with its phase, a run that ended as
`finished` or `stopped: <reason>` with when, and a trainer killed outright as stale."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis

from common import keys
from tests.conftest import ROOT, Processes, pipeline_state, trainer_args, wait_for
from trainer.status import STALE_AFTER_S, StatusPublisher, render_status


def _line(redis: Redis, run_key: str, now: float | None = None) -> str:
    text = render_status(redis, "rollouts", now=now)
    return next(line for line in text.splitlines() if run_key in line)


def test_a_run_is_live_then_finished_or_stopped_with_when(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    publisher = StatusPublisher(redis, "run-a", heartbeat_s=0.05)
    publisher.start(3)
    publisher.publish(3, "training", 0, [])
    assert "step 3 training" in _line(redis, "run-a")
    # The heartbeat thread keeps stamping while the loop says nothing (a long train()).
    first = float(redis.hget(keys.trainer_status("run-a"), "heartbeat_at"))
    wait_for(
        lambda: float(redis.hget(keys.trainer_status("run-a"), "heartbeat_at")) > first,
        10,
        "a heartbeat",
    )
    later = time.time() + STALE_AFTER_S + 30  # nobody beat for longer than the bound
    assert _line(redis, "run-a", now=later).startswith("  run-a: stale since ")
    publisher.end("finished")
    line = _line(redis, "run-a", now=later)  # an ended run is never stale
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert f"run-a: finished at {day}" in line and "(last step 3)" in line, line
    assert "training" not in line

    stopped = StatusPublisher(redis, "run-b")
    stopped.start(0)
    stopped.end("stopped: SIGTERM")
    assert f"run-b: stopped: SIGTERM at {day}" in _line(redis, "run-b")


def test_the_command_reads_redis_url_from_the_environment(redis_url: str) -> None:
    StatusPublisher(Redis.from_url(redis_url), "run-env").start(0)
    env = {**os.environ, "REDIS_URL": redis_url}
    result = subprocess.run(
        [sys.executable, "-m", "trainer.status"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "run-env: step 0 starting" in result.stdout, result.stdout


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_stopped_or_killed_trainer_is_not_shown_as_live(
    sig: signal.Signals, redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    art_path = tmp_path / "art"
    redis = Redis.from_url(redis_url)
    # No worker: the trainer waits for its first step's rollouts until it is stopped.
    trainer = processes.trainer(trainer_args(redis_url, "http://127.0.0.1:9/v1", dataset, art_path))
    state = wait_for(lambda: pipeline_state(art_path), 60, "the trainer's first state")
    run_key = state["run_key"]
    wait_for(lambda: "step 0 gathering" in _line_or_empty(redis, run_key), 60, "step 0 gathering")
    trainer.send_signal(sig)
    trainer.wait(60)
    if sig == signal.SIGTERM:
        line = _line(redis, run_key)
        assert "stopped: SIGTERM at" in line and "(last step 0)" in line, line
    else:  # nothing could be written: the heartbeat stops, and past the bound it shows
        assert "step 0 " in _line(redis, run_key)
        line = _line(redis, run_key, now=time.time() + STALE_AFTER_S + 10)
        assert "stale since" in line and "killed" in line, line


def _line_or_empty(redis: Redis, run_key: str) -> str:
    text = render_status(redis, "rollouts")
    return next((line for line in text.splitlines() if run_key in line), "")
