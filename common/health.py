"""Health monitor: child processes, /tmp usage and abandoned rollout directories, checked every
`health_check_interval` seconds in a background thread. It warns and reaps; it never stops a run.

A rollout directory is named after the worker process that owns it (`rlm-rollout-<pid>-...`,
see `rollout_workers.workdir`); it is reaped only once that process is gone."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

ROLLOUT_DIR_PREFIX = "rlm-rollout-"  # every rollout's working directory starts with this
STALE_AFTER_S = 3600.0
WARN_FRACTION = 0.8
MIN_FREE_WARN_GB = 20.0
MIN_FREE_CRITICAL_GB = 5.0


@dataclass(frozen=True)
class HealthReport:
    child_processes: int
    tmp_usage_gb: float
    tmp_free_gb: float
    rollout_dirs: int
    stale_dirs_reaped: int
    problems: tuple[str, ...]

    def summary(self) -> str:
        return (
            f"procs={self.child_processes} | tmp={self.tmp_usage_gb:.1f}GB | "
            f"rollouts={self.rollout_dirs} | stale={self.stale_dirs_reaped}"
        )


class HealthMonitor:
    def __init__(
        self,
        interval_s: float,
        max_child_processes: int,
        max_tmp_usage_gb: float,
        tmp_dir: str | None = None,
        stale_after_s: float = STALE_AFTER_S,
    ) -> None:
        self.interval_s = interval_s
        self.max_child_processes = max_child_processes
        self.max_tmp_usage_gb = max_tmp_usage_gb
        self.tmp_dir = Path(tmp_dir or tempfile.gettempdir())  # where rollouts make their dirs
        self.stale_after_s = stale_after_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> HealthReport:
        problems: list[str] = []
        children = len(psutil.Process().children(recursive=True))
        if children >= self.max_child_processes:
            problems.append(f"child processes {children} at the limit {self.max_child_processes}")
        elif children >= WARN_FRACTION * self.max_child_processes:
            problems.append(f"child processes {children} near the limit {self.max_child_processes}")

        rollout_dirs = [p for p in self._list_tmp() if p.name.startswith(ROLLOUT_DIR_PREFIX)]
        usage_gb = sum(_tree_size(p) for p in rollout_dirs) / 1e9
        if usage_gb >= WARN_FRACTION * self.max_tmp_usage_gb:
            problems.append(f"rollout dirs use {usage_gb:.1f}GB of {self.max_tmp_usage_gb}GB")
        free_gb = shutil.disk_usage(self.tmp_dir).free / 1e9
        if free_gb < MIN_FREE_WARN_GB:
            problems.append(f"only {free_gb:.1f}GB free in {self.tmp_dir}")

        now = time.time()
        reaped = 0
        for path in rollout_dirs:
            try:
                if self._abandoned(path, now):
                    shutil.rmtree(path, ignore_errors=True)
                    reaped += 1
            except FileNotFoundError:
                continue
        report = HealthReport(
            children, usage_gb, free_gb, len(rollout_dirs) - reaped, reaped, tuple(problems)
        )
        critical = children >= self.max_child_processes or free_gb < MIN_FREE_CRITICAL_GB
        level = logging.ERROR if critical else logging.WARNING if problems else logging.INFO
        log.log(level, "health: %s%s", report.summary(), "".join(f" | {p}" for p in problems))
        return report

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:
                log.exception("health check failed")

    def _abandoned(self, path: Path, now: float) -> bool:
        """A rollout dir whose owner (the worker process named in it) is gone. A live rollout
        is never reaped, however long it runs; a dir not naming its owner goes when stale."""
        owner = owner_pid(path.name)
        if owner is None:
            return now - path.stat().st_mtime > self.stale_after_s
        try:
            # A pid reused by a process started after the dir was made is not its owner.
            return psutil.Process(owner).create_time() > path.stat().st_ctime + 1
        except psutil.NoSuchProcess:
            return True

    def _list_tmp(self) -> list[Path]:
        try:
            return [p for p in self.tmp_dir.iterdir() if p.is_dir()]
        except OSError:
            return []


def owner_pid(name: str) -> int | None:
    """The worker pid in a rollout dir's name (`rlm-rollout-<pid>-<random>`), else None."""
    head = name.removeprefix(ROLLOUT_DIR_PREFIX).split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total
