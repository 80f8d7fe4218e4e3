"""The trainer's resume state, kept in ART's `state.json` under its own key."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from typing import Any

STATE_KEY = "rlm_pipeline"  # ART keeps its own keys in state.json; ours live under this one


@dataclass(frozen=True)
class PipelineState:
    run_key: str  # names this run's jobs and streams in Redis; new for every fresh start
    last_completed_step: int  # -1 before the first step
    model_step: int  # the backend's checkpoint step after that step trained
    config_hash: str

    @classmethod
    def fresh(cls, run_id: str, model_step: int, config_hash: str) -> PipelineState:
        """A run started from scratch gets its own Redis keys: jobs and results of an earlier
        run under the same name (whose state was deleted) can never be mistaken for ours."""
        return cls(f"{run_id}-{secrets.token_hex(3)}", -1, model_step, config_hash)

    def completed(self, step: int, model_step: int, config_hash: str) -> PipelineState:
        return PipelineState(self.run_key, step, model_step, config_hash)

    @property
    def next_step(self) -> int:
        return self.last_completed_step + 1

    @classmethod
    def read(cls, model: Any) -> PipelineState | None:
        saved = (model.read_state() or {}).get(STATE_KEY)
        return cls(**saved) if saved else None

    def write(self, model: Any) -> None:
        model.merge_state({STATE_KEY: asdict(self)})
