"""The health monitor counts, warns and reaps; it never raises."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.health import ROLLOUT_DIR_PREFIX, HealthMonitor


def test_only_rollout_dirs_whose_worker_is_gone_are_reaped(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = tmp_path / f"{ROLLOUT_DIR_PREFIX}{dead.pid}-abc"
    live_and_old = tmp_path / f"{ROLLOUT_DIR_PREFIX}{os.getpid()}-def"  # a rollout > 1 h
    unnamed_stale = tmp_path / f"{ROLLOUT_DIR_PREFIX}old"
    unnamed_fresh = tmp_path / f"{ROLLOUT_DIR_PREFIX}new"
    other = tmp_path / "not-a-rollout"
    for path in (abandoned, live_and_old, unnamed_stale, unnamed_fresh, other):
        path.mkdir()
        (path / "f.txt").write_text("x" * 1000)
    hours_ago = time.time() - 7200
    for path in (live_and_old, unnamed_stale, other):
        os.utime(path, (hours_ago, hours_ago))

    report = HealthMonitor(60, 256, 50, tmp_dir=str(tmp_path)).check()

    assert report.stale_dirs_reaped == 2 and report.rollout_dirs == 2
    assert not abandoned.exists() and not unnamed_stale.exists()
    assert live_and_old.exists() and unnamed_fresh.exists() and other.exists()
    assert report.summary().startswith("procs=")


def test_child_processes_near_the_limit_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    children = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(2)
    ]
    try:
        with caplog.at_level(logging.WARNING):
            report = HealthMonitor(60, 2, 50, tmp_dir=str(tmp_path)).check()
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert report.child_processes >= 2
    assert any("child processes" in p and "at the limit" in p for p in report.problems)
    assert "ERROR" in caplog.text or "at the limit" in caplog.text
