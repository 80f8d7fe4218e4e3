"""The trainer's resume state, kept in ART's `state.json` under its own key.

The state records the config fields that give the run its shape (job ids, group sizes, the
scenario order). Resuming with any of them changed is refused, naming them: job ids would be
reused for different groups. Other changed fields are logged.

Each experiment has a state of its own: it lives in the directory of the experiment's ART model
(`ExperimentConfig.model_dir`), so a new `--experiment-name` is a fresh run, never a resume.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from common.config import ExperimentConfig
from common.errors import ConfigError

log = logging.getLogger(__name__)

STATE_KEY = "rlm_pipeline"  # ART keeps its own keys in state.json; ours live under this one
SHAPE_FIELDS = (
    "model_name",
    "experiment_name",
    "rollouts_per_group",
    "groups_per_step",
    "dataset",
    "dataset_split",
    "dataset_size",
    "shuffle_seed",
    "num_epochs",
    "over_provision",  # the width of a batch: which scenario a group number names
)


def run_shape(config: ExperimentConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in SHAPE_FIELDS}


@dataclass(frozen=True)
class TrainingRecord:
    """Written just before `backend.train()`: after a crash, a model step past `model_step`
    says this call happened, and these groups are settled rather than trained again."""

    step: int
    groups: list[int]  # flat group numbers (see `Admission.number`)
    trained: int = 0  # how many of them went to train() (the others were dropped)


@dataclass(frozen=True)
class PipelineState:
    """Where the run stands. Groups are numbered in admission order (`Admission.number`):
    every number below `admitted` was started; a started group is settled once trained,
    dropped or cancelled, and numbers below `settled_below` (plus those in `settled`) are."""

    run_key: str  # names this run's jobs and streams in Redis; new for every fresh start
    last_completed_step: int  # -1 before the first step
    model_step: int  # the backend's checkpoint step after that step trained
    config_hash: str
    shape: dict[str, Any] = field(default_factory=dict)  # SHAPE_FIELDS at the start
    admitted: int = 0
    settled_below: int = 0
    settled: list[int] = field(default_factory=list)  # settled numbers >= settled_below
    training: TrainingRecord | None = None

    @classmethod
    def fresh(cls, run_id: str, model_step: int, config: ExperimentConfig) -> PipelineState:
        """A run started from scratch gets its own Redis keys: jobs and results of an earlier
        run under the same name (whose state was deleted) can never be mistaken for ours."""
        return cls(
            f"{run_id}-{secrets.token_hex(3)}", -1, model_step, config.config_hash,
            run_shape(config),
        )  # fmt: skip

    def is_settled(self, number: int) -> bool:
        """Trained, dropped or cancelled."""
        return number < self.settled_below or number in self.settled

    def unsettled(self) -> list[int]:
        """Groups started and not yet settled: in flight, or complete and waiting to train."""
        return [n for n in range(self.settled_below, self.admitted) if n not in self.settled]

    def numbered(self, width: int) -> PipelineState:
        """A state written before groups were numbered (only whole steps were recorded): every
        group of the steps it completed is settled."""
        if self.admitted or self.last_completed_step < 0:
            return self
        done = self.next_step * width
        return replace(self, admitted=done, settled_below=done)

    def with_admitted(self, admitted: int) -> PipelineState:
        return replace(self, admitted=admitted)

    def training_started(self, step: int, groups: list[int], trained: int) -> PipelineState:
        return replace(self, training=TrainingRecord(step, sorted(groups), trained))

    def completed(
        self, step: int, model_step: int, config_hash: str, settled: list[int]
    ) -> PipelineState:
        """The step is checkpointed: its groups, and those dropped or cancelled, are settled."""
        done = set(self.settled) | set(settled)
        below = self.settled_below
        while below in done:
            done.discard(below)
            below += 1
        return replace(
            self,
            last_completed_step=step,
            model_step=model_step,
            config_hash=config_hash,
            settled_below=below,
            settled=sorted(done),
            training=None,
        )

    @property
    def next_step(self) -> int:
        return self.last_completed_step + 1

    @classmethod
    def read(cls, model: Any) -> PipelineState | None:
        saved = (model.read_state() or {}).get(STATE_KEY)
        if not saved:
            return None
        training = saved.pop("training", None)
        return cls(**saved, training=TrainingRecord(**training) if training else None)

    def write(self, model: Any) -> None:
        model.merge_state({STATE_KEY: asdict(self)})


def fresh_state(config: ExperimentConfig, model_step: int) -> PipelineState:
    """The state of a run starting from scratch. Checkpoints already in the model directory
    (its state.json deleted, say) are where the weights start: said loudly, with the fix. A run
    of this experiment in the layout before experiments were separate is never silently
    restarted: the error says how to move it."""
    check_legacy_layout(config)
    if model_step > 0:
        log.warning(
            "no resume state in %s but checkpoints up to step %d: the new run starts from those "
            "weights; to train from the base model, delete the whole directory (or use another "
            "--experiment-name)",
            config.model_dir, model_step,
        )  # fmt: skip
    return PipelineState.fresh(config.run_id, model_step, config)


def check_legacy_layout(config: ExperimentConfig) -> None:
    """Refuse a fresh start while this experiment's run sits in `models/<model_name>` (the
    directory every experiment shared before each got `<model_name>-<experiment_name>`)."""
    legacy = config.model_dir.parent / config.model_name
    try:
        state = json.loads((legacy / "state.json").read_text()).get(STATE_KEY)
        written = json.loads((legacy / "pipeline_config.json").read_text())
    except (OSError, ValueError, AttributeError):
        return
    if state and written.get("experiment_name") == config.experiment_name:
        raise ConfigError(
            f"experiment {config.experiment_name!r} has a run in {legacy} (the layout before "
            f"experiments were separate): `mv {legacy} {config.model_dir}` to resume it, or "
            "delete it to start afresh"
        )


def check_resume(state: PipelineState, config: ExperimentConfig, previous_config: Path) -> None:
    """Refuse to resume with a changed run shape (naming the fields); log other changes."""
    if state.config_hash == config.config_hash:
        return
    current = run_shape(config)
    changed = {k: (v, current[k]) for k, v in state.shape.items() if current.get(k) != v}
    if changed:
        described = ", ".join(
            f"--{k.replace('_', '-')} {was!r} -> {now!r}" for k, (was, now) in changed.items()
        )
        raise ConfigError(
            f"cannot resume run {state.run_key}: {described} changes the run's shape; restore "
            "the old value, or start a new experiment with another --experiment-name (or delete "
            f"{config.model_dir})"
        )
    try:
        before = json.loads(previous_config.read_text())
    except (OSError, ValueError):
        before = {}
    now = config.redacted_dump()  # pipeline_config.json holds the redacted form
    others = sorted(k for k in now if k in before and before[k] != now[k])
    log.warning(
        "resuming run %s with config %s (was %s); changed: %s",
        state.run_key, config.config_hash, state.config_hash, ", ".join(others) or "unknown",
    )  # fmt: skip
