"""ExperimentConfig keeps the seed's flags (names, defaults, meaning) and rejects bad values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.config import ExperimentConfig, parse_config
from common.prompts import r2e_cot_system_prompt, r2e_system_prompt
from common.rewards import binary_test_reward, finished_reward
from tests.conftest import ROOT

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
    assert "import art" not in result.stderr


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


def test_local_backend_without_gpu_stops_at_once_with_advice(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "--art-path", str(tmp_path), "--no-wandb"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if "nvidia-smi" in result.stderr and result.returncode == 0:
        pytest.skip("this machine has a GPU")
    assert result.returncode == 2
    assert "--backend local needs a CUDA GPU" in result.stderr
