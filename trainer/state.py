"""The trainer's resume state, kept in ART's `state.json` under its own key."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

STATE_KEY = "rlm_pipeline"  # ART keeps its own keys in state.json; ours live under this one


@dataclass(frozen=True)
class PipelineState:
    last_completed_step: int  # -1 before the first step
    model_step: int  # the backend's checkpoint step after that step trained
    config_hash: str

    @property
    def next_step(self) -> int:
        return self.last_completed_step + 1

    @classmethod
    def read(cls, model: Any) -> PipelineState | None:
        saved = (model.read_state() or {}).get(STATE_KEY)
        return cls(**saved) if saved else None

    def write(self, model: Any) -> None:
        model.merge_state({STATE_KEY: asdict(self)})
