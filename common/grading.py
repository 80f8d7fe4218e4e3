"""The grader's HTTP boundary: one request and one report, JSON over HTTP.

POST /grade with a `GradeRequest` (bearer token) -> 200 and a `GradeReport`, or an error
`{"error": {"type": ..., "message": ...}}` with a non-200 status. Every error is an
infrastructure failure for the caller, never a reward.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

GRADER_SCHEMA_VERSION = 1
TOKEN_ENV = "GRADER_TOKEN"


class GradeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = GRADER_SCHEMA_VERSION
    instance_id: str
    docker_image: str
    diff: str = Field(
        "", description="unified diff of the agent's changes, paths relative to /testbed"
    )
    timeout_s: float = Field(300.0, gt=0, le=3600)


class GradeTimings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    total_s: float  # request received -> report ready, queueing excluded
    queued_s: float  # waiting for a free grading slot
    tests_s: float  # run_tests.sh inside the container


class GradeReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = GRADER_SCHEMA_VERSION
    instance_id: str
    statuses: dict[str, str]  # test key -> PASSED / FAILED / ERROR (R2E-Gym's keys)
    timed_out: bool
    exit_code: int
    ignored_files: list[
        str
    ]  # parts of the diff the grader refused (hidden tests, run_tests.sh, ...)
    log_tail: str
    timings: GradeTimings


class GradeError(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str  # image_missing | patch_failed | engine_error | bad_request | unauthorized | busy
    message: str
