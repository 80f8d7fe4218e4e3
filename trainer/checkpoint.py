"""The checkpoint stage: the step's state written, then the results it settled acknowledged.

In this order: an entry leaves the results stream only once a checkpoint says its group is
settled, so a crash at any point loses no finished rollout and trains none twice."""

from __future__ import annotations

from typing import Any

from trainer.collector import ResultCollector
from trainer.state import PipelineState


def checkpoint(
    model: Any, state: PipelineState, collector: ResultCollector, entry_ids: list[str]
) -> PipelineState:
    state.write(model)
    collector.ack(entry_ids)
    return state
