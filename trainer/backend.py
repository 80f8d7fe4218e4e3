"""Building the ART backend named by `--backend`: one factory, a clear error for the unknown."""

from __future__ import annotations

import inspect
import os
import shutil
from typing import Any
from urllib.parse import urlparse

from common.config import ExperimentConfig, import_callable
from common.errors import ConfigError

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
