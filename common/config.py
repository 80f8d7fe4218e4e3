"""`ExperimentConfig`: the one place every setting of a training run lives (the worker's and the
grader's are in `common.service_config`).

Every field is a flag with the same name (`groups_per_step` -> `--groups-per-step`, built by
`common.flags`), so `--help` is the reference. The seed's flags keep their names, defaults and
meaning; `--max-steps` is the number of REPL steps per rollout, not training steps.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from common.errors import ConfigError
from common.wire import RolloutLimits


def callable_path(fn: Callable[..., Any]) -> str:
    """`module:qualname` of a function, the form workers import it by."""
    return f"{fn.__module__}:{fn.__qualname__}"


def import_callable(path: str) -> Callable[..., Any]:
    """Import `module:attr`; raises ConfigError naming the path and the fix."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{path!r} is not an import path: write it as 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {path!r} ({exc}): check the module and name") from exc
    if not callable(target):
        raise ConfigError(f"{path!r} is not callable: point it at a function")
    return target


REDIS_URL_ENV = "REDIS_URL"  # the Redis URL (with its password) by environment, never argv
REDACTED = "***"


def redact_url(value: str) -> str:
    """`value` with the password of a URL replaced (`redis://:***@host:6379/0`); anything else
    unchanged. For whatever leaves the process: W&B, pipeline_config.json, --help, logs."""
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return value
    if not password:
        return value
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))


def redis_url_from_env() -> str | None:
    return os.environ.get(REDIS_URL_ENV) or None


def _to_callable(value: Any) -> Callable[..., Any]:
    return import_callable(value) if isinstance(value, str) else value


# Experiment and model names: a directory, a W&B run id, the policy's `name@step`.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

# Reward functions of common.rewards that read the grader's test results.
TEST_REWARDS = ("binary_test_reward", "partial_test_reward")

# A function field: accepts a function or its import path, serialises to its import path.
ImportableFn = Annotated[
    Callable[..., Any],
    BeforeValidator(_to_callable),
    PlainSerializer(callable_path, return_type=str),
]


def _gpu_ids(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError("write GPU ids as comma-separated integers, e.g. 0,1") from None
    return value


# GPU ids: `0,1` on the command line, a list in a --config file.
GpuIds = Annotated[list[int] | None, BeforeValidator(_gpu_ids)]


class ExperimentConfig(BaseModel):
    """Everything one training run needs. Flags mirror fields; `config_hash` names the run."""

    model_config = ConfigDict(validate_assignment=True, validate_default=True, extra="forbid")

    # --- The seed's flags (same names, defaults and meaning) ---
    experiment_name: str = Field(
        "default",
        description="Experiment identifier: each experiment trains its own ART model "
        "<model-name>-<experiment-name> (weights, resume state, W&B run); the same name resumes",
    )
    model_name: str = Field(
        "r2e-rlm-qwen3-14b",
        description="ART model name (prefix; the W&B group that compares its experiments)",
    )
    project: str = Field("rlm-training", description="ART project name")
    base_model: str = Field("Qwen/Qwen3-14B", description="HuggingFace base model")
    vllm_url: str = Field(
        "http://localhost:8000/v1",
        description="Policy endpoint (OpenAI-compatible) that rollout workers call",
    )
    docker_url: str = Field("http://docker-node:8000", description="Grading (Docker) service")
    cache_dir: str = Field("/data/repo-cache", description="Pre-cached repo directory")
    num_epochs: int = Field(3, ge=1, description="Dataset epochs")
    groups_per_step: int = Field(8, ge=1, description="Scenarios per training step")
    rollouts_per_group: int = Field(4, ge=1, description="Rollouts per scenario")
    max_concurrent: int = Field(32, ge=1, description="Max rollouts in flight")
    max_steps: int = Field(15, ge=1, description="Max REPL steps per rollout")
    max_context_tokens: int = Field(28000, ge=256, description="Context window budget")
    learning_rate: float = Field(5e-6, gt=0, description="GRPO learning rate")
    dataset_size: int | None = Field(None, ge=1, description="Limit dataset (for testing)")
    log_dir: str = Field("logs", description="Trajectory log directory")
    log_sample_rate: float = Field(0.0, ge=0, le=1, description="Fraction of rollouts to log")

    # --- Data ---
    dataset: str = Field(
        "R2E-Gym/R2E-Gym-Lite",
        description="HF hub id, or a local .parquet/.jsonl file in R2E-Gym-Lite's schema",
    )
    dataset_split: str = Field("train", description="Dataset split")
    shuffle_seed: int = Field(0, description="Seed of the per-epoch scenario shuffle")

    # --- Training ---
    backend: str = Field(
        "local",
        description="'local' (LocalBackend, GPU), 'serverless', or 'module:factory' "
        "(a function taking the config and returning an art Backend)",
    )
    art_path: str = Field(".art", description="Where ART keeps checkpoints, state and logs")
    system_prompt_fn: ImportableFn = Field(
        "common.prompts:r2e_system_prompt", description="System prompt function (module:name)"
    )
    reward_fn: ImportableFn = Field(
        "common.rewards:binary_test_reward", description="Reward function (module:name)"
    )
    grader: Literal["docker", "none"] = Field(
        "docker",
        description="'docker': hidden tests run by the grading service at --docker-url; "
        "'none': no tests, reward_fn sees the outcome only (smoke runs)",
    )
    local_grader: bool = Field(
        False, description="Start the grading service beside the trainer (one-machine runs)"
    )
    grading_timeout_s: float = Field(300.0, gt=0, description="Time limit of the hidden tests")
    wandb: bool = Field(True, description="Log to W&B (offline when WANDB_API_KEY is unset)")

    # --- Queue ---
    redis_url: str | None = Field(
        default_factory=redis_url_from_env,
        description="Redis URL (also from REDIS_URL, which keeps its password off the command "
        "line); unset: localhost:6379, else a private redis-server",
    )
    queue_name: str = Field("rollouts", description="RQ queue the rollout workers listen on")
    job_timeout_s: int = Field(3600, ge=10, description="RQ timeout of one group job")
    job_retries: int = Field(2, ge=0, description="RQ retries of a group job that crashed")
    lease_ttl_s: int = Field(
        10, ge=2, description="A job whose worker stops renewing its lease this long is requeued"
    )
    rollout_retries: int = Field(
        2, ge=0, description="Retries of an infrastructure error inside one rollout"
    )
    retry_backoff_s: float = Field(2.0, ge=0, description="First retry delay; doubles each try")
    request_timeout_s: float = Field(600.0, gt=0, description="Timeout of one policy request")
    rollout_deadline_s: int | None = Field(
        None,
        ge=1,
        description="A rollout not arrived this long after its job started is rerun alone; "
        "unset: --job-timeout-s",
    )
    rollout_reruns: int = Field(
        2, ge=0, description="Reruns of a rollout that never arrived, before it counts as failed"
    )
    redis_outage_s: float = Field(
        60.0, gt=0, description="A Redis outage this long is ridden out; longer ends the process"
    )
    keys_ttl_days: float = Field(
        3.0, gt=0, description="A finished run's Redis keys expire after this many days"
    )
    local_workers: int = Field(
        0, ge=0, description="Rollout worker processes to start beside the trainer"
    )
    gateway_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve the policy to remote workers on this port (token: GATEWAY_TOKEN)",
    )
    public_policy_url: str | None = Field(
        None, description="The gateway's URL as workers reach it; unset: http://<host>:<port>/v1"
    )

    # --- Rollout ---
    max_completion_tokens: int = Field(4000, ge=1, description="Completion cap per model turn")
    code_timeout_s: float = Field(90.0, gt=0, description="Wall-clock limit of one code block")
    max_output_chars: int = Field(
        3000, ge=100, description="Code output shown to the model (head and tail kept)"
    )
    max_sub_queries: int = Field(10, ge=0, description="llm_query calls allowed per rollout")
    grade_unfinished: bool = Field(
        False,
        description="Grade rollouts that never called finish() (or left no diff); default: they "
        "get reward 0 without a grading, as in the original",
    )
    truncated_rollouts: Literal["score", "mask"] = Field(
        "score",
        description="Rollouts that hit --max-steps, or whose system prompt, task and last turn "
        "no longer fit --max-context-tokens: 'score' trains them with their reward, 'mask' "
        "leaves them out of their group",
    )

    rollout_time_limit_s: float | None = Field(
        None,
        gt=0,
        description="Wall time of one rollout; past it the agent gets no more turns and the "
        "rollout ends as truncated; unset: no limit",
    )
    post_replies_over_tokens: int = Field(
        1024,
        ge=-1,
        description="A policy reply of at least this many completion tokens is posted to the "
        "trainer as it arrives, so the trainer builds it while the rollout goes on (the "
        "result then refers to it); -1: replies travel only with the result",
    )

    # --- Asynchronous training, stragglers, evaluation ---
    max_steps_off_policy: int = Field(
        0,
        ge=0,
        description="S: groups of the next steps start while earlier ones run and while "
        "train() runs, at most (S+1) x --groups-per-step untrained at once; a group sampled "
        "more than S steps before it would train is dropped; 0: the synchronous loop",
    )
    over_provision: int = Field(
        0,
        ge=0,
        description="K: start K extra groups per step and train on the first "
        "--groups-per-step complete ones; the rest carry over (S > 0) or are cancelled (S = 0)",
    )
    keep_zero_variance: bool = Field(
        False, description="Train groups whose rollouts all got the same reward (no signal)"
    )
    manual_gc: bool = Field(
        True,
        description="Collect cyclic garbage once after each step instead of automatically "
        "(the automatic collector walks every held rollout object again and again)",
    )
    eval_every: int = Field(
        0, ge=0, description="Evaluate the policy every N training steps; 0: never"
    )
    eval_split: str | None = Field(
        None, description="Dataset split of the held-out evaluation scenarios (never trained)"
    )
    eval_size: int = Field(16, ge=1, description="Scenarios per evaluation")
    eval_rollouts: int = Field(1, ge=1, description="Rollouts per evaluation scenario")
    trainer_gpu_ids: GpuIds = Field(
        None,
        description="LocalBackend dedicated mode: GPUs that train (e.g. 0); with "
        "--inference-gpu-ids, inference keeps serving while train() runs",
    )
    inference_gpu_ids: GpuIds = Field(
        None, description="LocalBackend dedicated mode: GPUs that serve the policy (e.g. 1)"
    )

    # --- GRPO: backend.train()'s parameters, ART 0.5.18 LocalBackend.train's names and defaults,
    # passed through unchanged (trainer/backend.py: train_kwargs). `--learning-rate` is above. ---
    loss_fn: Literal["cispo", "ppo"] = Field("cispo", description="GRPO: RL loss function")
    normalize_advantages: bool = Field(
        True, description="GRPO: false centres rewards without dividing by their std dev"
    )
    kl_penalty_coef: float = Field(
        0.0, description="GRPO: KL-penalised advantage adjustment coefficient (0: off)"
    )
    kl_penalty_reference_step: int | None = Field(
        None, description="GRPO: checkpoint step used as KL reference; unset: the base model"
    )
    kl_ref_adapter_path: str | None = Field(
        None, description="GRPO: LoRA adapter directory used as KL reference (instead of a step)"
    )
    epsilon: float | None = Field(
        None, description="GRPO: importance-sampling clip epsilon; unset: by --loss-fn"
    )
    epsilon_high: float | None = Field(None, description="GRPO: upper clip bound; unset: --epsilon")
    advantage_balance: float = Field(
        0.0, ge=-1, le=1, description="GRPO: bias towards positive advantages (-1..1)"
    )
    scale_rewards: bool = Field(True, description="GRPO: normalise advantages by reward std dev")
    importance_sampling_level: Literal["token", "sequence", "average", "geometric_average"] = Field(
        "token", description="GRPO: level of the importance-sampling weights"
    )
    max_negative_advantage_importance_sampling_weight: float | None = Field(
        None, description="GRPO: cap of the importance weight of negative-advantage samples"
    )
    mask_prob_ratio: bool = Field(False, description="GRPO: mask probability ratios")
    kimi_k2_tau: float | None = Field(None, description="GRPO: Kimi K2 tau (experimental)")
    precalculate_logprobs: bool = Field(False, description="GRPO: precalculate logprobs")
    allow_training_without_logprobs: bool = Field(
        False, description="GRPO: train even where no logprobs are available"
    )
    plot_tensors: bool = Field(False, description="GRPO: plot training tensors (debugging)")
    truncated_importance_sampling: float | None = Field(
        None, description="GRPO: truncation threshold of importance-sampling weights"
    )
    scale_learning_rate_by_reward_std_dev: bool = Field(
        False, description="GRPO: scale the learning rate by the reward std dev"
    )
    logprob_calculation_chunk_size: int = Field(
        1024, ge=1, description="GRPO: chunk size of the logprob calculation"
    )
    packed_sequence_length: int | None = Field(
        None, ge=1, description="GRPO: packed sequence length; unset: ART's choice"
    )
    num_trajectories_learning_rate_multiplier_power: float = Field(
        0.0, description="GRPO: power of the learning-rate multiplier by trajectory count"
    )

    # --- Health ---
    health_check_interval: float = Field(60.0, gt=0, description="Seconds between health checks")
    max_child_processes: int = Field(256, ge=1, description="Child process budget (warn at 80%)")
    max_tmp_usage_gb: float = Field(50.0, gt=0, description="/tmp usage budget in GB")

    @field_validator("experiment_name", "model_name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        # Part of a directory, a W&B run id and vLLM's `name@step` LoRA name.
        if not NAME_PATTERN.fullmatch(value):
            raise ValueError(
                "use letters, digits, '.', '_' and '-' only, starting with a letter or digit "
                "(it names a directory, a W&B run and the policy `name@step`)"
            )
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> ExperimentConfig:
        if self.max_concurrent < self.rollouts_per_group:
            raise ValueError(
                f"--max-concurrent ({self.max_concurrent}) must be at least --rollouts-per-group "
                f"({self.rollouts_per_group}): one job runs a whole group at once"
            )
        if self.eval_every and not self.eval_split:
            raise ValueError(
                "--eval-every needs --eval-split: a split never trained on (R2E-Gym-Lite has "
                "dev_* splits beside train)"
            )
        if self.eval_every and self.eval_split == self.dataset_split:
            raise ValueError(
                f"--eval-split {self.eval_split} is the training split: evaluation scenarios "
                "must be held out; pick another split"
            )
        if (self.trainer_gpu_ids is None) != (self.inference_gpu_ids is None):
            raise ValueError(
                "--trainer-gpu-ids and --inference-gpu-ids go together (dedicated mode): pass "
                "both, or neither to share one GPU"
            )
        if self.trainer_gpu_ids and set(self.trainer_gpu_ids) & set(self.inference_gpu_ids or []):
            raise ValueError("--trainer-gpu-ids and --inference-gpu-ids must not overlap")
        needs_tests = getattr(self.reward_fn, "__name__", "") in TEST_REWARDS
        if self.grader == "none" and needs_tests:
            raise ValueError(
                f"--reward-fn {callable_path(self.reward_fn)} needs test results but --grader is "
                "none: pass --grader docker, or --reward-fn common.rewards:finished_reward"
            )
        return self

    def redacted_dump(self) -> dict[str, Any]:
        """`model_dump(mode="json")` with every URL's password replaced: the form of the config
        that may be written, logged or sent (W&B, pipeline_config.json)."""
        return {
            name: redact_url(value) if isinstance(value, str) else value
            for name, value in self.model_dump(mode="json").items()
        }

    @property
    def config_hash(self) -> str:
        """Stable for equal configs, different for any changed value but a password (the hash
        is published: it must not be an oracle for one)."""
        canonical = json.dumps(self.redacted_dump(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def rollout_limits(self) -> RolloutLimits:
        """What a worker needs to bound each rollout: the fields of the same names."""
        return RolloutLimits(**{name: getattr(self, name) for name in RolloutLimits.model_fields})

    @property
    def dedicated_gpus(self) -> bool:
        """Whether training and inference have GPUs of their own (inference serves during
        train() with LocalBackend)."""
        return self.trainer_gpu_ids is not None

    @property
    def art_model_name(self) -> str:
        """The ART model this experiment trains: `<model_name>-<experiment_name>`. Its directory
        `<art_path>/<project>/models/<art_model_name>` holds the experiment's checkpoints, resume
        state and W&B run; the policy is served as `<art_model_name>@<step>`."""
        return f"{self.model_name}-{self.experiment_name}"

    @property
    def model_dir(self) -> Path:
        """ART's directory of this experiment's model."""
        return Path(self.art_path) / self.project / "models" / self.art_model_name

    @property
    def run_id(self) -> str:
        """Prefix of this run's Redis keys and job ids (the trainer adds a per-run suffix)."""
        raw = f"{self.project}-{self.art_model_name}"
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in raw)
