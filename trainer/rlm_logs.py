"""Trajectory logs for the RLM visualizer: one `.jsonl` file per sampled rollout.

`logs/<experiment>/step_<k>/<rollout_id>.jsonl`: a metadata line (with the instance id, reward,
step, config hash and status beside the visualizer's own keys; a failed rollout's `error` too),
then the iteration lines the worker recorded. A failed rollout is written when the worker sent
its iterations. Written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.wire import RolloutResult
from rollout_workers.sub_agents import MAX_DEPTH

log = logging.getLogger(__name__)


def metadata_line(result: RolloutResult, config_hash: str, max_steps: int) -> dict[str, Any]:
    trajectory = result.trajectory
    model = str(trajectory.metadata.get("model", "")) if trajectory is not None else ""
    line: dict[str, Any] = {
        "type": "metadata",
        "timestamp": datetime.fromtimestamp(result.started_at, UTC).isoformat(),
        "root_model": model or f"policy@{result.policy_step}",
        # The root is depth 0; sub-agents answer llm_query down to MAX_DEPTH.
        "max_depth": MAX_DEPTH,
        "max_iterations": max_steps,
        "backend": "openai",
        "backend_kwargs": {},
        "environment_type": "bwrap-repl",
        "environment_kwargs": {},
        "other_backends": [],
        "instance_id": result.instance_id,
        "reward": trajectory.reward if trajectory is not None else None,
        "step": result.step,
        "config_hash": config_hash,
        "rollout_id": result.rollout_id,
        "status": result.status,
    }
    if result.error is not None:
        line["error"] = f"{result.error.type}: {result.error.message}"
        line["error_traceback"] = result.error.traceback
    return line


def _finite(value: Any) -> Any:
    """The visualizer rejects NaN and Infinity: such numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_rlm_logs(
    results: list[RolloutResult], directory: Path, config_hash: str, max_steps: int
) -> int:
    written = 0
    for result in results:
        if not result.rlm_log:
            continue
        directory.mkdir(parents=True, exist_ok=True)
        lines = [metadata_line(result, config_hash, max_steps), *result.rlm_log]
        text = "".join(json.dumps(_finite(line), allow_nan=False) + "\n" for line in lines)
        target = directory / f"{result.rollout_id}.jsonl"
        tmp = target.with_suffix(".jsonl.tmp")
        tmp.write_text(text)
        tmp.replace(target)
        written += 1
    if written:
        log.info("wrote %d visualizer logs to %s", written, directory)
    return written
