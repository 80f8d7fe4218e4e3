"""Embedded defaults: with no Redis given or listening, the trainer starts a private one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from redis import Redis

from common.errors import ConfigError
from tests.conftest import ROOT, free_port
from trainer import services


def test_private_redis_is_started_persistent_and_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        services, "DEFAULT_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0"
    )  # nothing there
    local = services.resolve_redis(None, str(tmp_path))
    try:
        assert local.redis_process is not None
        connection = Redis.from_url(local.redis_url)
        assert connection.ping()
        assert connection.config_get("appendonly")["appendonly"] == "yes"
    finally:
        local.stop()
    assert local.redis_process.poll() is not None


def test_no_redis_anywhere_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services, "DEFAULT_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setattr(services.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="apt-get install redis-server"):
        services.resolve_redis(None, str(tmp_path))


def test_unreachable_redis_url_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--redis-url .* Redis unreachable"):
        services.resolve_redis(f"redis://127.0.0.1:{free_port()}/0", str(tmp_path))


def test_private_redis_dies_with_a_killed_trainer_and_one_data_dir_has_one_server(
    tmp_path: Path,
) -> None:
    """A trainer killed with SIGKILL takes its redis-server along; while a server runs, a second
    one on the same data dir is refused."""
    script = (
        "import sys, time\n"
        "from trainer import services\n"
        f"services.DEFAULT_REDIS_URL = 'redis://127.0.0.1:{free_port()}/0'\n"
        f"local = services.resolve_redis(None, {str(tmp_path)!r})\n"
        "print(local.redis_process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    trainer = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        redis_pid = int(trainer.stdout.readline())
        with pytest.raises(ConfigError, match="another redis-server is running on"):
            services.lock_data_dir(tmp_path / "redis", wait_s=0.2)
        trainer.kill()
        trainer.wait(10)
        psutil.Process(redis_pid).wait(10)  # raises TimeoutExpired if it outlived the trainer
        os.close(services.lock_data_dir(tmp_path / "redis", wait_s=5))  # free again
    finally:
        trainer.kill()
        trainer.wait(10)
