"""Embedded defaults: a Redis when none is given, and rollout workers beside the trainer."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from redis import Redis
from redis.exceptions import RedisError

from common.config import REDIS_URL_ENV
from common.errors import ConfigError
from common.grading import TOKEN_ENV
from common.process import die_with_parent

log = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
LOCK_WAIT_S = 10.0
NO_REDIS = (
    "no Redis at localhost:6379 and no redis-server binary to start one: install it "
    "(`apt-get install redis-server`) or pass --redis-url redis://HOST:PORT/0"
)


@dataclass
class LocalServices:
    """Processes the trainer started and therefore stops."""

    redis_url: str
    redis_process: subprocess.Popen | None = None
    queue_name: str = "rollouts"
    workers: list[subprocess.Popen] = field(default_factory=list)
    grader_process: subprocess.Popen | None = None
    grader_url: str | None = None  # set when the grader is ours (--local-grader)
    grader_token: str | None = None

    def start_grader(self) -> None:
        """The grading service beside the trainer, on a free loopback port with a fresh token."""
        port = free_port()
        self.grader_token = secrets.token_hex(24)
        self.grader_process = subprocess.Popen(
            [sys.executable, "-m", "grader", "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, TOKEN_ENV: self.grader_token},
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        self.grader_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not _grader_healthy(self.grader_url):
            if self.grader_process.poll() is not None or time.monotonic() > deadline:
                raise ConfigError(
                    "--local-grader: the grading service did not start (is a Docker engine "
                    "running? see its log above)"
                )
            time.sleep(0.1)
        log.info("started a local grader at %s", self.grader_url)

    def check_grader(self, docker_url: str) -> None:
        url = self.grader_url or docker_url
        if not _grader_healthy(url):
            raise ConfigError(
                f"no grading service answers at {url}/health: start `python -m grader` there, "
                "pass --local-grader, or --grader none for a smoke run"
            )

    def check(self) -> None:
        """Stop loudly if our Redis died; restart a local worker that died."""
        if self.redis_process is not None and self.redis_process.poll() is not None:
            raise RuntimeError(f"the private redis-server exited ({self.redis_process.returncode})")
        for index, worker in enumerate(self.workers):
            if worker.poll() is not None:
                log.error(
                    "local worker %d exited with %s; starting a new one",
                    worker.pid,
                    worker.returncode,
                )
                self.workers[index] = self._spawn_worker()

    def start_workers(self, count: int, queue_name: str) -> None:
        self.queue_name = queue_name
        self.workers = [self._spawn_worker() for _ in range(count)]
        if count:
            log.info("started %d local rollout workers", count)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM everything we started, workers first: a busy worker requeues its job, which
        needs Redis still up."""
        _terminate(self.workers, timeout_s)
        _terminate(
            [p for p in (self.grader_process, self.redis_process) if p is not None], timeout_s
        )

    def _spawn_worker(self) -> subprocess.Popen:
        # The Redis URL (its password) by environment: a command line is readable by every
        # user of the host (ps, /proc/PID/cmdline).
        env = {**os.environ, REDIS_URL_ENV: self.redis_url}
        if self.grader_token:
            env[TOKEN_ENV] = self.grader_token
        return subprocess.Popen(
            [sys.executable, "-m", "rollout_workers", "--queue-name", self.queue_name],
            env=env,
            # A worker whose trainer died gets SIGTERM: it requeues its job and exits.
            preexec_fn=die_with_parent(signal.SIGTERM),
        )  # fmt: skip


def resolve_redis(redis_url: str | None, data_dir: str) -> LocalServices:
    """The given Redis, else one on localhost:6379, else a private redis-server we start."""
    if redis_url:
        _require_ping(redis_url, "--redis-url")
        return LocalServices(redis_url)
    if _ping(DEFAULT_REDIS_URL):
        return LocalServices(DEFAULT_REDIS_URL)
    directory = Path(data_dir) / "redis"
    # Append-only persistence: results survive a crash of the trainer and of this Redis.
    # One server per data dir: the lock is held by the trainer and the server it starts.
    lock = lock_data_dir(directory)
    try:
        process, url = start_redis_server(directory, appendonly=True, lock=lock)
    finally:
        os.close(lock)  # the server holds its own copy for as long as it lives
    log.info("started a private redis-server at %s (data in %s)", url, directory)
    return LocalServices(url, redis_process=process)


def lock_data_dir(directory: Path, wait_s: float = LOCK_WAIT_S) -> int:
    """An open descriptor holding the data dir's `redis.lock` (flock). A server of a trainer
    that was just killed is given `wait_s` to exit; a live one is refused, naming the dir."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "redis.lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise ConfigError(
                    f"another redis-server is running on {directory}: stop the trainer that "
                    "uses it, or pass --redis-url"
                ) from None
            time.sleep(0.1)


def start_redis_server(
    directory: Path, appendonly: bool, lock: int | None = None, port: int | None = None
) -> tuple[subprocess.Popen, str]:
    """A redis-server on a free loopback port, answering; (its process, its URL).

    It dies with the process that started it (SIGTERM on the parent's death, even a SIGKILL),
    and inherits `lock` (a descriptor from `lock_data_dir`), holding it until it exits."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError(NO_REDIS)
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory.resolve()),
         "--appendonly", "yes" if appendonly else "no", "--save", "",
         "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL,
        preexec_fn=die_with_parent(signal.SIGTERM),
        pass_fds=(lock,) if lock is not None else (),
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not _ping(url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise ConfigError(f"a redis-server on port {port} did not start; pass --redis-url")
        time.sleep(0.05)
    return process, url


def _terminate(processes: list[subprocess.Popen], timeout_s: float) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _grader_healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url.rstrip('/')}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _ping(url: str) -> bool:
    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except RedisError:
        return False


def _require_ping(url: str, flag: str) -> None:
    try:
        Redis.from_url(url, socket_connect_timeout=3).ping()
    except RedisError as exc:
        raise ConfigError(
            f"{flag} {url}: Redis unreachable ({exc}); start it or fix the URL"
        ) from exc


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
