"""The train stage: one `backend.train()` call on the groups of a step."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import art

from trainer.gateway import Gateway

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trained:
    metrics: dict[str, float]  # the backend's own (loss, grad norm, ...)
    train_s: float


async def train_groups(
    backend: Any,
    model: Any,
    groups: list[art.TrajectoryGroup],
    grpo: dict[str, Any],
    gateway: Gateway | None,
    shared_gpu: bool,
) -> Trained:
    """Train on `groups`. With one GPU for both, vLLM sleeps meanwhile: the gateway holds the
    workers' policy requests (they wait, never fail) and forwards them when it wakes."""
    started = time.monotonic()
    sleeps = gateway is not None and shared_gpu
    if sleeps:
        gateway.sleep()
    try:
        result = await backend.train(model, groups, **grpo)
    finally:
        if sleeps:
            gateway.wake()
    metrics = {k: float(v) for k, v in (result.metrics or {}).items()}
    return Trained(metrics, time.monotonic() - started)
