"""Building the ART backend named by `--backend`: one factory, a clear error for the unknown."""

from __future__ import annotations

import inspect
import os
import shutil
from typing import Any
from urllib.parse import urlparse

from common.config import ExperimentConfig, import_callable
from common.errors import ConfigError

# backend.train()'s GRPO parameters: ExperimentConfig fields named, and defaulting, exactly as
# ART 0.5.18's `LocalBackend.train` (tests/test_experiments.py checks both against ART's source).
# Not exposed: `loss_fn_config` and `adam_params` (LocalBackend refuses anything but None),
# `save_checkpoint` (resume needs every step's checkpoint) and `verbose`.
TRAIN_PARAMS = (
    "learning_rate",
    "loss_fn",
    "normalize_advantages",
    "kl_penalty_coef",
    "kl_penalty_reference_step",
    "kl_ref_adapter_path",
    "epsilon",
    "epsilon_high",
    "advantage_balance",
    "scale_rewards",
    "importance_sampling_level",
    "max_negative_advantage_importance_sampling_weight",
    "mask_prob_ratio",
    "kimi_k2_tau",
    "precalculate_logprobs",
    "allow_training_without_logprobs",
    "plot_tensors",
    "truncated_importance_sampling",
    "scale_learning_rate_by_reward_std_dev",
    "logprob_calculation_chunk_size",
    "packed_sequence_length",
    "num_trajectories_learning_rate_multiplier_power",
)

NO_GPU = (
    "--backend local needs a CUDA GPU and the GPU extra (`uv sync --extra gpu`), and this machine "
    "has no GPU: run the trainer on a GPU host, or pass --backend serverless (W&B, needs "
    "WANDB_API_KEY); rollout workers and the grader need no GPU"
)


async def build_backend(config: ExperimentConfig) -> Any:
    if config.backend == "local":
        return _local_backend(config)
    if config.backend == "serverless":
        import art

        if "WANDB_API_KEY" not in os.environ:
            raise ConfigError("--backend serverless needs WANDB_API_KEY in the environment")
        return art.ServerlessBackend()
    if ":" in config.backend:
        backend = import_callable(config.backend)(config)
        return await backend if inspect.isawaitable(backend) else backend
    raise ConfigError(
        f"--backend {config.backend!r} is unknown: use local, serverless or module:factory"
    )


def train_kwargs(config: ExperimentConfig, backend: Any) -> dict[str, Any]:
    """The keyword arguments of every `backend.train(model, groups, **kwargs)` call: each GRPO
    parameter as configured, unchanged. A backend whose `train` takes `**kwargs` gets them all;
    one with a narrower signature (ServerlessBackend: `ppo` instead of `loss_fn`, no KL or
    LocalBackend-only options) gets those it accepts, and a value it cannot take is refused here,
    before any rollout runs."""
    values = {name: getattr(config, name) for name in TRAIN_PARAMS}
    parameters = inspect.signature(backend.train).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return values
    if "loss_fn" not in parameters and "ppo" in parameters:
        values["ppo"] = values.pop("loss_fn") == "ppo"
    kwargs = {}
    for name, value in values.items():
        if name in parameters:
            kwargs[name] = value
        elif value != ExperimentConfig.model_fields[name].default:
            raise ConfigError(
                f"--{name.replace('_', '-')} {value!r}: {type(backend).__name__}.train does not "
                "take it; leave it at its default, or use --backend local"
            )
    return kwargs


def register_kwargs(config: ExperimentConfig) -> dict[str, Any]:
    """Extra arguments of `model.register`: LocalBackend's vLLM listens on --vllm-url's port."""
    if config.backend != "local":
        return {}
    port = urlparse(config.vllm_url).port or 8000
    return {"_openai_client_config": {"server_args": {"port": port}}}


def _local_backend(config: ExperimentConfig) -> Any:
    if shutil.which("nvidia-smi") is None:
        raise ConfigError(NO_GPU)
    try:
        from art.local import LocalBackend
    except ImportError as exc:
        raise ConfigError(f"{NO_GPU} ({exc})") from exc
    return LocalBackend(path=config.art_path)
