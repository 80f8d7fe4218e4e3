"""Embedded defaults: with no Redis given or listening, the trainer starts a private one."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis

from common.errors import ConfigError
from tests.conftest import free_port
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
