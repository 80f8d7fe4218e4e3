"""The training loop, whole: admit -> gather -> assemble -> train -> record -> checkpoint.

run_training(config)
├── open_run (trainer/setup.py): Redis, workers, backend + TrainableModel, gateway, scenarios,
│   resume state, W&B, status; on the way out `finished` or `stopped: <reason>`
└── TrainingLoop.run, until the schedule's last step is checkpointed:
    ├── admit (trainer/admission.py): start groups while the admission rule allows, each job
    │         pinned to the policy `name@step` it samples from
    ├── gather (trainer/gather.py): read results, requeue jobs whose worker died or never
    │         started them, rerun rollouts past --rollout-deadline-s alone (trainer/dispatch.py)
    ├── assemble (trainer/groups.py): the first --groups-per-step complete groups; failed,
    │         masked and zero-variance groups dropped and counted
    ├── train (trainer/training.py): backend.train(...), recorded first in the state so a
    │         crash after it never trains the groups twice
    ├── record (trainer/record.py): model.log, W&B, visualizer logs
    └── checkpoint (trainer/checkpoint.py): the state, then the results it settled acknowledged

Each experiment trains its own ART model, `<model_name>-<experiment_name>`
(`ExperimentConfig.art_model_name`): its own checkpoints, resume state and W&B run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import art

from common.config import ExperimentConfig
from common.garbage import Collection, manual_collection
from common.queue import rollout_queue
from common.wire import PolicyRef
from trainer.admission import Admission
from trainer.checkpoint import checkpoint
from trainer.collector import Polled, ResultCollector
from trainer.dispatch import Dispatcher
from trainer.evaluate import Evaluator
from trainer.gather import Gatherer
from trainer.groups import AssembledGroups, GroupResults, assemble_groups
from trainer.record import StepRecord, ZeroVarianceWatch, record_step
from trainer.retention import redis_used_memory_mb
from trainer.setup import LoopSetup, open_run, public_url
from trainer.state import PipelineState
from trainer.training import Trained, train_groups

log = logging.getLogger(__name__)


async def run_training(config: ExperimentConfig) -> PipelineState:
    """Train until the schedule is exhausted; returns the final state."""
    async with open_run(config) as setup:
        with manual_collection(config.manual_gc) as collection:
            loop = TrainingLoop(setup, setup.state, collection)
            try:
                state = await loop.run()
            finally:
                loop.close()
        setup.finished(state)
        return state


class TrainingLoop:
    """The stages, in a loop: admit -> gather -> assemble -> train -> record -> checkpoint.

    With S = `--max-steps-off-policy` = 0 it is the seed's synchronous loop: a step's groups
    start, the step waits for them, trains, and only then do the next step's groups start.
    With S > 0, groups keep starting (under the admission rule) while others run and while
    `train()` runs, and a step trains as soon as `--groups-per-step` groups are complete."""

    def __init__(
        self, setup: LoopSetup, state: PipelineState, collection: Collection | None = None
    ) -> None:
        self.setup = setup
        self.collection = collection or Collection(manual=False)
        self.config = config = setup.config
        self.state = state
        self.collector = ResultCollector(setup.connection, state.run_key)
        self.dispatcher = Dispatcher(
            rollout_queue(config.queue_name, setup.connection),
            config.job_timeout_s,
            config.job_retries,
            config.lease_ttl_s,
            config.rollout_deadline_s,
            config.rollout_reruns,
        )
        self.admission = Admission(
            config, setup.schedule, state.run_key, setup.services.grader_url or config.docker_url
        )
        self.gatherer = Gatherer(
            self.collector,
            self.dispatcher,
            setup.services,
            config.lease_ttl_s / 2,
            lambda key: self.state.is_settled(self.admission.number(key)),
            setup.status.publish,
        )
        self.evaluator = Evaluator.create(
            config, setup.connection, state.run_key, setup.services, self.admission.grader_url
        )
        self._policy: PolicyRef | None = None  # the policy new groups sample from
        self._idle_since = time.monotonic()  # the trainer's last train() ended
        self._wait_s = 0.0  # how long the step in training waited for its groups
        self._assembled = AssembledGroups([], Counter())  # the step in training's groups
        self._counted: dict[str, int] = {}  # the queue's counters at the last step
        self._zero_variance = ZeroVarianceWatch()

    async def run(self) -> PipelineState:
        await self._recover()
        total_steps = self.setup.schedule.total_steps
        policy = await self._current_policy()
        if self.state.next_step < total_steps:
            for number in self.state.unsettled():  # an earlier life's: adopted, not rerun
                self.gatherer.start(self.admission.job(number, policy))
        if self.evaluator is not None:
            self.evaluator.start_if_due(policy)
        training: asyncio.Task[Trained] | None = None
        taken: list[GroupResults] = []
        reading: asyncio.Task[Polled] | None = None
        while self.state.next_step < total_steps:
            if training is None and (batch := self._ready_batch()) is not None:
                taken, training = batch, await self._start_training(batch)
                if self.config.max_steps_off_policy == 0:
                    await asyncio.wait([training])  # synchronous: nothing runs beside train()
            if training is not None and training.done():
                await self._finish_step(taken, training.result())
                training, taken = None, []
                self.collection.collect()  # the step's groups are let go: a small heap
                continue
            await self._admit(training is not None)
            if self.evaluator is not None:
                await self.evaluator.poll(self.setup.model, self.setup.wandb)
            reading = reading or asyncio.create_task(self.gatherer.read())
            waits = [reading] if training is None else [reading, training]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if reading.done():
                phase = "gathering" if training is None else "training"
                self.gatherer.take(reading.result(), self.state.next_step, phase)
                reading = None
        if reading is not None:
            await reading
        self._cancel_leftovers()
        if self.evaluator is not None:
            await self.evaluator.drain(self.setup.model, self.setup.wandb)
        return self.state

    def close(self) -> None:
        """Stop the result readers (what they read and did not hand out stays pending)."""
        self.collector.close()
        if self.evaluator is not None:
            self.evaluator.gatherer.collector.close()

    async def _admit(self, training: bool) -> None:
        """Start as many groups as the admission rule allows, each pinned to the policy now."""
        room = self.admission.room(
            len(self.gatherer.groups), len(self.gatherer.in_flight), training
        )
        room = min(room, self.admission.total - self.state.admitted)
        if room <= 0:
            return
        first = self.state.admitted
        # Recorded before the jobs exist: a restarted trainer adopts them by number.
        self.state = self.state.with_admitted(first + room)
        self.state.write(self.setup.model)
        policy = await self._current_policy()
        for number in range(first, first + room):
            self.gatherer.start(self.admission.job(number, policy))

    def _ready_batch(self) -> list[GroupResults] | None:
        """The first `--groups-per-step` complete groups, once there are that many (fewer when
        no more can come); of those from older policies first, which would go stale sooner."""
        # Never a group too stale to train (one adopted after a long stop, say): the next
        # checkpoint drops it.
        bound = self.state.model_step - self.config.max_steps_off_policy
        fresh = [g for g in self.gatherer.complete() if g.policy_step >= bound]
        complete = sorted(fresh, key=lambda g: g.policy_step)  # stable: completion order kept
        wanted = self.config.groups_per_step
        exhausted = self.state.admitted >= self.admission.total and not self.gatherer.in_flight
        if len(complete) >= wanted or exhausted:
            return complete[:wanted]
        return None

    async def _start_training(self, batch: list[GroupResults]) -> asyncio.Task[Trained]:
        self._wait_s = time.monotonic() - self._idle_since
        self._assembled = assemble_groups(
            batch, self.config.truncated_rollouts == "mask", self.config.keep_zero_variance
        )
        numbers = [self.admission.number(g.key) for g in batch]
        trained = len(self._assembled.groups)
        self.state = self.state.training_started(self.state.next_step, numbers, trained)
        self.state.write(self.setup.model)
        self.setup.status.publish(
            self.state.next_step, "training", len(self.gatherer.in_flight), []
        )
        return asyncio.create_task(self._train(self._assembled.groups))

    async def _train(self, groups: list[art.TrajectoryGroup]) -> Trained:
        if not groups:
            log.error("step %d: no group to train (%s)", self.state.next_step,
                      dict(self._assembled.dropped) or "none complete")  # fmt: skip
            return Trained({}, 0.0)
        setup = self.setup
        return await train_groups(
            setup.backend, setup.model, groups, setup.grpo, setup.gateway,
            shared_gpu=not self.config.dedicated_gpus,
        )  # fmt: skip

    async def _finish_step(self, batch: list[GroupResults], trained: Trained) -> None:
        """Record the step, settle its groups and those it made too stale, checkpoint."""
        self._idle_since = time.monotonic()
        step, model_step = self.state.next_step, await self.setup.model.get_step()
        dropped = Counter(self._assembled.dropped)
        settled = [self.admission.number(g.key) for g in batch]
        entry_ids = [e for g in batch for e in self.gatherer.settle(g.key)]
        cancelled = 0
        for group in list(self.gatherer.groups.values()):
            if model_step - group.policy_step <= self.config.max_steps_off_policy:
                continue
            settled.append(self.admission.number(group.key))
            if group.complete:  # it would train on a policy too old: dropped, counted
                dropped["stale"] += 1
                entry_ids += self.gatherer.settle(group.key)
            else:  # it can never train: stop its rollouts, free the workers
                cancelled += 1
                entry_ids += self.gatherer.cancel(group.key)
        record = StepRecord(
            step, batch, self._assembled.groups, dropped, self._wait_s,
            [self.state.model_step - g.policy_step for g in batch], cancelled,
            trained.metrics, trained.train_s,
        )  # fmt: skip
        self._zero_variance.observe(step, dropped["zero_variance"], len(batch))
        await record_step(record, self.config, self.setup.model, self.setup.wandb,
                          self._queue_counters())  # fmt: skip
        state = self.state.completed(step, model_step, self.config.config_hash, settled)
        self.state = checkpoint(self.setup.model, state, self.collector, entry_ids)
        self._assembled = AssembledGroups([], Counter())  # let go of the step's groups
        self._policy = None  # the next groups sample from the new checkpoint
        if self.evaluator is not None:
            self.evaluator.start_if_due(await self._current_policy())

    async def _recover(self) -> None:
        """A `train()` recorded before a crash whose checkpoint exists: its groups are
        settled (their entries come back as stale results), never trained twice."""
        training = self.state.training
        if training is None:
            return
        model_step = await self.setup.model.get_step()
        if model_step <= self.state.model_step:
            log.info("step %d did not train before the trainer stopped; gathering it again",
                     training.step)  # fmt: skip
            return
        log.warning("step %d trained before the trainer stopped; not training it again",
                    training.step)  # fmt: skip
        metrics = {
            "pipeline/groups_trained": float(training.trained),
            "pipeline/groups_dropped": float(len(training.groups) - training.trained),
            "pipeline/recovered_step": 1.0,  # its other figures died with the earlier life
        }
        await self.setup.model.log(None, split="train", metrics=metrics, step=model_step)
        state = self.state.completed(
            training.step, model_step, self.config.config_hash, training.groups
        )
        self.state = checkpoint(self.setup.model, state, self.collector, [])

    async def _current_policy(self) -> PolicyRef:
        """The policy new groups sample from: the latest checkpoint, as `name@step`."""
        if self._policy is None:
            model, config, gateway = self.setup.model, self.config, self.setup.gateway
            policy = PolicyRef(
                inference_name=model.get_inference_name(),
                policy_step=await model.get_step(),
                endpoint=model.inference_base_url or config.vllm_url,
                api_key=model.inference_api_key or "",
            )
            if gateway is not None:
                endpoint = config.public_policy_url or f"{public_url(gateway)}/v1"
                policy = policy.model_copy(update={"endpoint": endpoint, "api_key": gateway.token})
            self._policy = policy
        return self._policy

    def _cancel_leftovers(self) -> None:
        """The run is over: over-provisioned groups still running are told to stop."""
        for key in list(self.gatherer.groups):
            self.gatherer.cancel(key)

    def _queue_counters(self) -> dict[str, float]:
        """The queue's counters since the last step."""
        now = {
            "pipeline/requeued_jobs": self.dispatcher.requeued,
            "pipeline/rerun_rollouts": self.dispatcher.reruns,
            "pipeline/dead_letters": self.collector.dead_letters,
            "pipeline/stale_results": self.gatherer.stale_results,
        }
        before, self._counted = self._counted, now
        counters = {k: float(v - before.get(k, 0)) for k, v in now.items()}
        counters["pipeline/queue_depth"] = float(len(self.dispatcher.queue))
        counters["pipeline/groups_in_flight"] = float(len(self.gatherer.in_flight))
        counters["pipeline/redis_used_memory_mb"] = redis_used_memory_mb(self.setup.connection)
        counters["pipeline/gc_s"] = self.collection.last_s  # after the step before
        return counters
