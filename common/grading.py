"""The grader's HTTP boundary: one request and one report, JSON over HTTP.

POST /grade with a `GradeRequest` (bearer token) -> 200 and a `GradeReport`, or an error
`{"error": {"type": ..., "message": ...}}` with a non-200 status. Every error is an
infrastructure failure for the caller, never a reward.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

GRADER_SCHEMA_VERSION = 1
TOKEN_ENV = "GRADER_TOKEN"
# A Docker image reference (registry[:port]/path:tag@digest), lower case as Docker requires.
# Strict on purpose: the value ends up on `docker run`'s command line, so it must never be
# able to look like an option (`--privileged`, `--volume=/:/host`).
IMAGE_REFERENCE = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::[0-9]{1,5})?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?"
)


class GradeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = GRADER_SCHEMA_VERSION
    instance_id: str
    docker_image: str
    diff: str = Field(
        "", description="unified diff of the agent's changes, paths relative to /testbed"
    )
    timeout_s: float = Field(300.0, gt=0, le=3600)

    @field_validator("docker_image")
    @classmethod
    def _image_reference(cls, value: str) -> str:
        if len(value) > 255 or not IMAGE_REFERENCE.fullmatch(value):
            raise ValueError(f"not a Docker image reference: {value[:100]!r}")
        return value


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
    # The diff tried to change how the tests run (their runner, its configuration, the
    # virtualenv, a module shadowing pytest or the standard library, fake status lines...): it
    # was not run, it scores 0, and `tamper` says what it touched ("<reason>: <path>").
    tampered: bool = False
    tamper: list[str] = Field(default_factory=list)
    log_tail: str
    timings: GradeTimings


class GradeError(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str  # image_missing | patch_failed | engine_error | bad_request | unauthorized | busy
    message: str
