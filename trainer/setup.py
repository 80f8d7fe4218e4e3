"""Everything the training loop runs against, started in order and stopped in reverse.

`open_run(config)` starts (or finds) Redis, the health monitor, a local grader and workers when
asked, the backend and ART's `TrainableModel`, the policy gateway, the scenarios and their
schedule, the resume state, W&B and the status published in Redis; on the way out it records the
run's last phase (`finished` or `stopped: <reason>`) and stops what it started.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis

from common.config import ExperimentConfig
from common.errors import ConfigError
from common.health import HealthMonitor
from common.queue import connect
from producer import Schedule, load_tasks
from trainer.backend import build_backend, register_kwargs, train_kwargs
from trainer.evaluate import eval_run_id
from trainer.gateway import GATEWAY_TOKEN_ENV, Gateway
from trainer.observability import WandbLogger
from trainer.retention import expire_run_keys
from trainer.services import LocalServices, resolve_redis
from trainer.state import PipelineState, check_resume, fresh_state
from trainer.status import FINISHED, STOPPED, SignalNotes, StatusPublisher, stop_reason

log = logging.getLogger(__name__)


@dataclass
class LoopSetup:
    config: ExperimentConfig
    backend: Any
    grpo: dict[str, Any]  # backend.train()'s GRPO arguments
    model: Any  # art.TrainableModel
    services: LocalServices
    connection: Redis
    gateway: Gateway | None
    schedule: Schedule
    state: PipelineState  # as read at the start (or fresh)
    wandb: WandbLogger | None
    status: StatusPublisher

    def finished(self, state: PipelineState) -> None:
        """The run is over: its Redis keys expire after --keys-ttl-days."""
        log.info("training finished at step %d", state.last_completed_step)
        for run_id in (state.run_key, eval_run_id(state.run_key)):
            expire_run_keys(self.connection, run_id, self.config.keys_ttl_days * 86400)


@asynccontextmanager
async def open_run(config: ExperimentConfig) -> AsyncIterator[LoopSetup]:
    import art

    backend = services = monitor = gateway = wandb_logger = status = None
    ending = f"{STOPPED}: error"
    signals = SignalNotes()
    try:
        backend = await build_backend(config)  # first: without a GPU, stop before anything starts
        grpo = train_kwargs(config, backend)  # a value this backend cannot take stops us here
        services = resolve_redis(config.redis_url, config.art_path)
        monitor = HealthMonitor(
            config.health_check_interval, config.max_child_processes, config.max_tmp_usage_gb
        )
        monitor.start()
        if config.local_grader:
            services.start_grader()
        services.start_workers(config.local_workers, config.queue_name)
        if config.grader == "docker":
            services.check_grader(config.docker_url)
        model = art.TrainableModel(
            name=config.art_model_name,
            project=config.project,
            base_model=config.base_model,
            _internal_config=_dedicated_gpus(config),
        )
        await model.register(backend, **register_kwargs(config))
        gateway = start_gateway(config, model)
        loaded = load_tasks(config.dataset, config.dataset_split, config.dataset_size)
        schedule = Schedule(
            loaded.tasks, config.groups_per_step, config.num_epochs, config.shuffle_seed
        )
        state = PipelineState.read(model)
        if state is None:
            # Recorded before anything trains, so a crash between train() and the checkpoint
            # of step 0 is recognised on restart like any other step's.
            state = fresh_state(config, await model.get_step())
            state.write(model)
        else:
            check_resume(state, config, _resolved_config_path(config))
            state = state.numbered(config.groups_per_step + config.over_provision)
        _write_resolved_config(config, model)
        wandb_logger = WandbLogger(config, model, state.run_key)
        log.info(
            "run %s (config %s): steps %d..%d, %d scenarios",
            state.run_key,
            config.config_hash,
            state.next_step,
            schedule.total_steps - 1,
            len(loaded.tasks),
        )
        connection = connect(services.redis_url, config.redis_outage_s)
        status = StatusPublisher(connection, state.run_key)
        status.start(state.next_step)
        yield LoopSetup(
            config, backend, grpo, model, services, connection, gateway, schedule, state,
            wandb_logger, status,
        )  # fmt: skip
        ending = FINISHED
    except BaseException as exc:
        ending = f"{STOPPED}: {signals.reason() or stop_reason(exc)}"
        raise
    finally:
        signals.restore()
        if status is not None:
            status.end(ending)
        if wandb_logger is not None:
            wandb_logger.close()
        if gateway is not None:
            gateway.stop()
        if monitor is not None:
            monitor.stop()
        if services is not None:
            services.stop()
        if backend is not None:
            await backend.close()


def _dedicated_gpus(config: ExperimentConfig) -> Any:
    """LocalBackend's dedicated mode: training and inference on GPUs of their own."""
    if not config.dedicated_gpus:
        return None
    from art.dev import InternalModelConfig

    return InternalModelConfig(
        trainer_gpu_ids=config.trainer_gpu_ids, inference_gpu_ids=config.inference_gpu_ids
    )


def start_gateway(config: ExperimentConfig, model: Any) -> Gateway | None:
    if config.gateway_port is None:
        return None
    token = os.environ.get(GATEWAY_TOKEN_ENV, "")
    if len(token) < 16:
        raise ConfigError(f"--gateway-port needs {GATEWAY_TOKEN_ENV}: a secret of 16+ characters")
    upstream = model.inference_base_url or config.vllm_url
    gateway = Gateway(
        ("0.0.0.0", config.gateway_port), upstream, token, model.inference_api_key or ""
    )
    gateway.start()
    return gateway


def public_url(gateway: Gateway) -> str:
    return f"http://{socket.getfqdn()}:{gateway.server_address[1]}"


def _resolved_config_path(config: ExperimentConfig) -> Path:
    return config.model_dir / "pipeline_config.json"


def _write_resolved_config(config: ExperimentConfig, model: Any) -> None:
    """The config as resolved, next to the model's checkpoints (written then renamed)."""
    directory = _resolved_config_path(config).parent
    directory.mkdir(parents=True, exist_ok=True)
    payload = {**config.redacted_dump(), "config_hash": config.config_hash}  # no passwords
    tmp = directory / "pipeline_config.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(directory / "pipeline_config.json")
