"""The training loop, whole: dispatch a step's groups, gather, assemble, train, log, checkpoint.

run_training(config)
├── Redis (given, localhost:6379, or a private one) + optional local workers
├── health monitor thread
├── backend + TrainableModel, scenarios, resume state
└── for each step from the resume point:
    ├── gather (trainer/gather.py): enqueue groups (<= --max-concurrent rollouts in flight),
    │           read results, requeue jobs whose worker died or never started them, rerun
    │           rollouts past --rollout-deadline-s alone, progress line (trainer/dispatch.py)
    ├── assemble_groups (a group with a failed rollout is dropped, see trainer/groups.py)
    ├── backend.train(...)   (skipped if this step trained before a crash)
    ├── model.log(...)
    └── checkpoint the step, then acknowledge the results it used
└── on the way out: the run's last phase in Redis, `finished` or `stopped: <reason>`

Each experiment trains its own ART model, `<model_name>-<experiment_name>`
(`ExperimentConfig.art_model_name`): its own checkpoints, resume state and W&B run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from redis import Redis

from common import keys
from common.config import ExperimentConfig, callable_path
from common.errors import ConfigError
from common.health import HealthMonitor
from common.queue import connect, rollout_queue
from common.wire import PolicyRef, RolloutJob, RolloutLimits
from producer import Schedule, Task, load_tasks
from trainer.backend import build_backend, register_kwargs, train_kwargs
from trainer.collector import ResultCollector
from trainer.dispatch import Dispatcher
from trainer.gateway import GATEWAY_TOKEN_ENV, Gateway
from trainer.gather import Gatherer
from trainer.groups import assemble_groups
from trainer.metrics import step_metrics
from trainer.observability import WandbLogger
from trainer.retention import expire_run_keys, redis_used_memory_mb
from trainer.rlm_logs import write_rlm_logs
from trainer.services import LocalServices, resolve_redis
from trainer.state import PipelineState, check_resume, fresh_state
from trainer.status import FINISHED, STOPPED, SignalNotes, StatusPublisher, stop_reason

log = logging.getLogger(__name__)


async def run_training(config: ExperimentConfig) -> PipelineState:
    """Train until the schedule is exhausted; returns the final state."""
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
            name=config.art_model_name, project=config.project, base_model=config.base_model
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
        runner = StepRunner(
            config, state.run_key, model, backend, connection, services, gateway, wandb_logger,
            status, grpo,
        )  # fmt: skip
        for step in range(state.next_step, schedule.total_steps):
            state = await runner.run_step(step, schedule.tasks_for_step(step), state)
        log.info("training finished at step %d", state.last_completed_step)
        ending = FINISHED
        expire_run_keys(connection, state.run_key, config.keys_ttl_days * 86400)
        return state
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


class StepRunner:
    """Runs one training step at a time against the queue."""

    def __init__(
        self,
        config: ExperimentConfig,
        run_key: str,
        model: Any,
        backend: Any,
        connection: Redis,
        services: LocalServices,
        gateway: Gateway | None = None,
        wandb: WandbLogger | None = None,
        status: StatusPublisher | None = None,
        grpo: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.run_key = run_key
        self.model = model
        self.backend = backend
        self.connection = connection
        self.services = services
        self.gateway = gateway
        self.wandb = wandb
        self.status = status or StatusPublisher(connection, run_key)
        self.grpo = grpo if grpo is not None else train_kwargs(config, backend)
        self.collector = ResultCollector(connection, run_key)
        self.dispatcher = Dispatcher(
            rollout_queue(config.queue_name, connection),
            config.job_timeout_s,
            config.job_retries,
            config.lease_ttl_s,
            config.rollout_deadline_s,
            config.rollout_reruns,
        )
        self.gatherer = Gatherer(
            self.collector,
            self.dispatcher,
            services,
            config.rollouts_per_group,
            config.max_concurrent,
            config.lease_ttl_s / 2,
            self._publish_status,
        )

    async def run_step(self, step: int, tasks: list[Task], state: PipelineState) -> PipelineState:
        started = time.monotonic()
        policy = PolicyRef(
            inference_name=self.model.get_inference_name(),
            policy_step=await self.model.get_step(),
            endpoint=self.model.inference_base_url or self.config.vllm_url,
            api_key=self.model.inference_api_key or "",
        )
        if self.gateway is not None:
            endpoint = self.config.public_policy_url or f"{public_url(self.gateway)}/v1"
            policy = policy.model_copy(update={"endpoint": endpoint, "api_key": self.gateway.token})
        jobs = [self._job(step, index, task, policy) for index, task in enumerate(tasks)]
        requeued_before, dead_before = self.dispatcher.requeued, self.collector.dead_letters
        reruns_before = self.dispatcher.reruns
        results, stats = await self.gatherer.gather(step, jobs)
        wait_s = time.monotonic() - started

        assembled = assemble_groups(results, self.config.truncated_rollouts == "mask")
        write_rlm_logs(results, self._log_dir(step), self.config.config_hash, self.config.max_steps)
        self._publish_status(step, "training", 0, [])
        train_started = time.monotonic()
        train_metrics: dict[str, float] = {}
        if await self.model.get_step() > state.model_step:
            log.warning("step %d trained before the trainer stopped; not training it again", step)
        elif not assembled.groups:
            log.error("step %d: no complete group to train (%s)", step, dict(assembled.dropped))
        else:
            if self.gateway is not None:
                self.gateway.sleeping.set()  # vLLM sleeps while a single GPU trains
            try:
                result = await self.backend.train(self.model, assembled.groups, **self.grpo)
            finally:
                if self.gateway is not None:
                    self.gateway.sleeping.clear()
            train_metrics = {k: float(v) for k, v in (result.metrics or {}).items()}
        train_s = time.monotonic() - train_started

        model_step = await self.model.get_step()
        metrics = step_metrics(
            results,
            assembled.dropped,
            wait_s=wait_s,
            train_s=train_s,
            requeued_jobs=self.dispatcher.requeued - requeued_before,
            stale_results=stats.stale,
            dead_letters=self.collector.dead_letters - dead_before,
            queue_depth=len(self.dispatcher.queue),
        )
        metrics["pipeline/rerun_rollouts"] = float(self.dispatcher.reruns - reruns_before)
        metrics["pipeline/redis_used_memory_mb"] = redis_used_memory_mb(self.connection)
        metrics.update(train_metrics)
        await self.model.log(
            assembled.groups or None, split="train", metrics=metrics, step=model_step
        )
        if self.wandb is not None:
            self.wandb.log_step(model_step, metrics, assembled.groups)
        new_state = state.completed(step, model_step, self.config.config_hash)
        new_state.write(self.model)
        # Only now, with the step checkpointed, may the results it used leave the stream.
        self.collector.ack(results.entry_ids)
        log.info(
            "step %d done: %d groups trained, %d dropped, wait %.1fs, train %.1fs",
            step,
            len(assembled.groups),
            sum(assembled.dropped.values()),
            wait_s,
            train_s,
        )
        return new_state

    def _job(self, step: int, group_index: int, task: Task, policy: PolicyRef) -> RolloutJob:
        config = self.config
        job_id = keys.job_id(self.run_key, step, group_index)
        return RolloutJob(
            run_id=self.run_key,
            job_id=job_id,
            step=step,
            group_index=group_index,
            rollouts_per_group=config.rollouts_per_group,
            scenario=task.scenario,
            grading=task.grading if config.grader == "docker" else None,
            grader_url=self.services.grader_url or config.docker_url,
            grading_timeout_s=config.grading_timeout_s,
            cache_dir=config.cache_dir if config.grader == "docker" else "",
            policy=policy,
            limits=RolloutLimits(
                max_steps=config.max_steps,
                max_context_tokens=config.max_context_tokens,
                max_completion_tokens=config.max_completion_tokens,
                code_timeout_s=config.code_timeout_s,
                max_output_chars=config.max_output_chars,
                request_timeout_s=config.request_timeout_s,
                rollout_retries=config.rollout_retries,
                retry_backoff_s=config.retry_backoff_s,
                max_sub_queries=config.max_sub_queries,
            ),
            system_prompt_fn=callable_path(config.system_prompt_fn),
            reward_fn=callable_path(config.reward_fn),
            results_stream=keys.results_stream(self.run_key),
            lease_ttl_s=config.lease_ttl_s,
            log_sample_rate=config.log_sample_rate,
            enqueued_at=time.time(),
            grade_unfinished=config.grade_unfinished,
        )

    def _log_dir(self, step: int) -> Path:
        return Path(self.config.log_dir) / self.config.experiment_name / f"step_{step}"

    def _publish_status(
        self, step: int, phase: str, groups_in_flight: int, waiting_for: list[str]
    ) -> None:
        self.status.publish(step, phase, groups_in_flight, waiting_for)


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
