"""ExperimentConfig keeps the seed's flags (names, defaults, meaning) and rejects bad values."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from common.config import ExperimentConfig
from common.flags import parse_config
from common.prompts import r2e_cot_system_prompt, r2e_system_prompt
from common.rewards import binary_test_reward, finished_reward
from tests.conftest import ROOT, wait_for
from trainer.services import free_port

SEED_DEFAULTS = {
    "experiment_name": "default",
    "model_name": "r2e-rlm-qwen3-14b",
    "project": "rlm-training",
    "base_model": "Qwen/Qwen3-14B",
    "vllm_url": "http://localhost:8000/v1",
    "docker_url": "http://docker-node:8000",
    "cache_dir": "/data/repo-cache",
    "num_epochs": 3,
    "groups_per_step": 8,
    "rollouts_per_group": 4,
    "max_concurrent": 32,
    "max_steps": 15,
    "max_context_tokens": 28000,
    "learning_rate": 5e-6,
    "dataset_size": None,
    "log_dir": "logs",
    "log_sample_rate": 0.0,
}


def test_seed_flags_keep_their_defaults() -> None:
    config = ExperimentConfig()
    assert {name: getattr(config, name) for name in SEED_DEFAULTS} == SEED_DEFAULTS
    assert config.health_check_interval == 60
    assert config.max_child_processes == 256
    assert config.max_tmp_usage_gb == 50
    assert config.backend == "local"


def test_flags_mirror_fields() -> None:
    config = parse_config(
        [
            "--groups-per-step",
            "2",
            "--dataset-size",
            "10",
            "--no-scale-rewards",
            "--max-steps",
            "3",
        ],
        ExperimentConfig,
        "t",
    )
    assert (
        config.groups_per_step,
        config.dataset_size,
        config.scale_rewards,
        config.max_steps,
    ) == (
        2,
        10,
        False,
        3,
    )
    assert parse_config(["--dataset-size", "none"], ExperimentConfig, "t").dataset_size is None


def test_help_lists_every_flag_with_its_default() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    for name in ExperimentConfig.model_fields:
        assert "--" + name.replace("_", "-") in result.stdout
    assert "(default: r2e-rlm-qwen3-14b)" in result.stdout


def test_help_imports_neither_art_nor_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "trainer", "--help"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "trainer" in imported and "common.config" in imported  # the probe sees imports
    heavy = {m for m in imported if m.split(".")[0] in {"art", "torch", "wandb", "datasets"}}
    assert heavy == set()


def test_config_hash_is_stable_and_sensitive() -> None:
    assert ExperimentConfig().config_hash == ExperimentConfig().config_hash
    base = ExperimentConfig().config_hash
    assert ExperimentConfig(learning_rate=1e-5).config_hash != base
    assert ExperimentConfig(system_prompt_fn=r2e_cot_system_prompt).config_hash != base


def test_functions_are_swappable_in_code_and_by_path() -> None:
    config = ExperimentConfig()
    assert config.system_prompt_fn is r2e_system_prompt
    config.system_prompt_fn = r2e_cot_system_prompt
    assert config.system_prompt_fn is r2e_cot_system_prompt
    by_path = ExperimentConfig(reward_fn="common.rewards:finished_reward")
    assert by_path.reward_fn is finished_reward
    assert ExperimentConfig().reward_fn is binary_test_reward


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--max-concurrent", "2"],
            "--max-concurrent (2) must be at least --rollouts-per-group (4)",
        ),
        (
            ["--groups-per-step", "0"],
            "--groups-per-step: Input should be greater than or equal to 1",
        ),
        (["--reward-fn", "nowhere:fn"], "cannot import 'nowhere:fn'"),
        (["--log-sample-rate", "2"], "--log-sample-rate"),
        (["--grader", "none"], "needs test results but --grader is none"),
    ],
)
def test_bad_values_get_one_clear_line(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trainer", *argv], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr


@pytest.mark.slow
def test_local_backend_without_gpu_stops_at_once_with_advice(tmp_path, redis_url: str) -> None:
    # The session's own Redis: without --redis-url the trainer would use whatever answers on
    # localhost:6379.
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "--art-path", str(tmp_path), "--no-wandb"]
        + ["--redis-url", redis_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "nvidia-smi" in result.stderr and result.returncode == 0:
        pytest.skip("this machine has a GPU")
    assert result.returncode == 2
    assert "--backend local needs a CUDA GPU" in result.stderr


# --- Secrets: the Redis password stays out of everything that leaves a process --------------

PASSWORD = "s3cret-0123456789abcdef"
SECRET_URL = f"redis://:{PASSWORD}@redis-host:6379/0"
SECRETS = ("REDIS_PASSWORD", "GRADER_TOKEN", "GATEWAY_TOKEN")


def test_the_config_as_written_holds_no_password() -> None:
    config = ExperimentConfig(redis_url=SECRET_URL)
    dumped = json.dumps(config.redacted_dump())
    assert PASSWORD not in dumped and "redis://:***@redis-host:6379/0" in dumped
    assert config.redacted_dump()["learning_rate"] == config.learning_rate  # the rest is kept
    other_password = ExperimentConfig(redis_url=SECRET_URL.replace(PASSWORD, "another-one"))
    assert other_password.config_hash == config.config_hash  # the published hash: no oracle
    assert ExperimentConfig(redis_url="redis://:x@elsewhere:6379/0").config_hash != (
        config.config_hash
    )


def test_pipeline_config_json_and_the_wandb_config_hold_no_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.observability import WandbLogger
    from trainer.setup import _write_resolved_config

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = ExperimentConfig(redis_url=SECRET_URL, art_path=str(tmp_path))
    _write_resolved_config(config, None)
    logger = WandbLogger(config, None, "run-key")  # offline: W&B's own files, really written
    logger.log_step(1, {"pipeline/step_wait_s": 1.0}, [])
    logger.close()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "pipeline_config.json" for p in written)
    # The run's config went into W&B's own run file, redacted.
    assert any(
        b"redis://:***@redis-host" in p.read_bytes() for p in written if p.suffix == ".wandb"
    )
    assert [p for p in written if PASSWORD.encode() in p.read_bytes()] == []


def test_help_and_logs_hide_the_password() -> None:
    env = {**os.environ, "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"}
    help_text = subprocess.run(
        [sys.executable, "-m", "rollout_workers", "--help"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    unreachable = subprocess.run(
        [sys.executable, "-m", "rollout_workers", "--redis-outage-s", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "redis://:***@127.0.0.1" in help_text.replace("\n", "").replace(" ", "")
    assert unreachable.returncode == 2
    assert "redis://:***@127.0.0.1" in unreachable.stderr  # REDIS_URL was read, and redacted
    assert PASSWORD not in help_text + unreachable.stdout + unreachable.stderr


def test_local_workers_get_the_redis_url_by_environment(tmp_path: Path) -> None:
    from redis import Redis
    from rq import Worker

    from trainer.services import LocalServices

    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--dir", str(tmp_path), "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    services = LocalServices(url)
    try:
        wait_for(lambda: _pings(url), 10, "a redis-server with a password")
        services.start_workers(1, "secrets-test")
        connection = Redis.from_url(url)
        # It registered, so it had the password: not from its command line.
        wait_for(lambda: len(Worker.all(connection=connection)) == 1, 60, "the worker registered")
        [worker] = services.workers
        process = psutil.Process(worker.pid)
        # What it was started with (RQ later replaces its process title), and what it is now.
        command_lines = [" ".join(map(str, worker.args)), " ".join(process.cmdline())]
    finally:
        services.stop()
        server.terminate()
        server.wait()
    assert "rollout_workers" in command_lines[0]
    assert [line for line in command_lines if PASSWORD in line] == []


def _pings(url: str) -> bool:
    from redis import Redis
    from redis.exceptions import RedisError

    try:
        return bool(Redis.from_url(url, socket_connect_timeout=1).ping())
    except RedisError:
        return False


def _compose_config(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    base = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        ["docker-compose", "--env-file", str(env_file), "-f", "compose.yaml", "config"],
        cwd=ROOT, env={**base, "ENV_FILE": str(env_file), **env}, capture_output=True, text=True,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
@pytest.mark.parametrize("missing", SECRETS)
def test_compose_refuses_to_start_without_a_secret(tmp_path: Path, missing: str) -> None:
    secrets = {name: uuid.uuid4().hex for name in SECRETS}
    unset = _compose_config({k: v for k, v in secrets.items() if k != missing}, tmp_path)
    empty = _compose_config({**secrets, missing: ""}, tmp_path)
    complete = _compose_config(secrets, tmp_path)
    for refused in (unset, empty):
        assert refused.returncode != 0
        assert f"set {missing} in .env" in refused.stderr, refused.stderr
    assert complete.returncode == 0, complete.stderr
    rendered = yaml.safe_load(complete.stdout)
    for name, service in rendered["services"].items():
        assert service["environment"][missing] == secrets[missing]
        command = json.dumps(service.get("command", ""))
        assert secrets["REDIS_PASSWORD"] not in command and "--redis-url" not in command, name


def test_an_unedited_env_example_is_refused() -> None:
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert all(example[name] == "" for name in SECRETS)  # compose's `:?` refuses empty ones


@pytest.mark.parametrize(
    "value",
    ["", "change-me-long-random", "change-me-long-random-grader-token", "short",
     "has space 0123456789", "quote\"0123456789abc", "at@0123456789abcdef"],
)  # fmt: skip
def test_the_image_entrypoint_refuses_placeholder_secrets(value: str) -> None:
    for name in SECRETS:
        if name != "REDIS_PASSWORD" and value.startswith(("has", "quote", "at")):
            continue  # URL-safe characters are asked of the Redis password only
        env = {**os.environ, name: value}
        result = subprocess.run(
            ["sh", "docker/check_secrets.sh", "echo", "started"],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 78 and result.stdout == "", (name, value)
        [line] = result.stderr.splitlines()
        assert line.startswith("refusing to start:") and name in line


def test_the_image_entrypoint_runs_the_command_with_good_or_unset_secrets() -> None:
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    env["GRADER_TOKEN"] = uuid.uuid4().hex  # a worker on another machine sets only this one
    result = subprocess.run(
        ["sh", "docker/check_secrets.sh", "echo", "started"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "started\n"), result.stderr
