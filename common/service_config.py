"""The configs of the two services beside the trainer: a rollout worker and the grader.

Like `ExperimentConfig`, every field is a flag with the same name (`common.flags`).
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from common.config import redis_url_from_env


class WorkerConfig(BaseModel):
    """A rollout worker: everything else it needs arrives with each job."""

    model_config = ConfigDict(validate_assignment=True, extra="forbid")

    redis_url: str = Field(
        default_factory=lambda: redis_url_from_env() or "redis://localhost:6379/0",
        description="Redis URL of the trainer's queue (also from REDIS_URL, which keeps its "
        "password off the command line)",
    )
    queue_name: str = Field("rollouts", description="RQ queue to take rollout jobs from")
    redis_outage_s: float = Field(
        60.0, gt=0, description="A Redis outage this long is ridden out; longer ends the worker"
    )
    worker_name: str | None = Field(None, description="Worker name; unset: host and pid")
    burst: bool = Field(False, description="Exit when the queue is empty (for batch jobs)")
    health_check_interval: float = Field(60.0, gt=0, description="Seconds between health checks")
    max_child_processes: int = Field(256, ge=1, description="Child process budget (warn at 80%)")
    max_tmp_usage_gb: float = Field(50.0, gt=0, description="/tmp usage budget in GB")
    manual_gc: bool = Field(
        True,
        description="Collect cyclic garbage once after each job instead of automatically (the "
        "automatic collector walks every parsed completion token again and again)",
    )


class GraderConfig(BaseModel):
    """The grading service. Its bearer token comes from the GRADER_TOKEN environment variable."""

    model_config = ConfigDict(validate_assignment=True, extra="forbid")

    host: str = Field("0.0.0.0", description="Interface to listen on")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on")
    max_concurrent: int = Field(
        default_factory=lambda: os.cpu_count() or 2, ge=1, description="Gradings run at once"
    )
    max_queued: int = Field(256, ge=0, description="Gradings that may wait; beyond, HTTP 503")
    memory: str = Field("4g", description="Memory limit of a grading container")
    cpus: float = Field(2.0, gt=0, description="CPU limit of a grading container")
    pids: int = Field(512, ge=16, description="Process limit of a grading container")
    label: str | None = Field(
        None, description="Label of this grader's containers; unset: host:port"
    )
