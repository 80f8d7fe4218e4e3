"""One base error, one subclass per boundary. Failures crossing a boundary travel as `ErrorInfo`."""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(PipelineError):
    """A configuration value is invalid; the message names the flag and the fix."""


class WireError(PipelineError):
    """A message on the wire has an unknown schema version or a broken payload."""


class EndpointError(PipelineError):
    """The policy's OpenAI-compatible endpoint failed (down, timeout, 5xx). Infrastructure."""


class SandboxError(PipelineError):
    """The code sandbox could not run (could not start, crashed). Infrastructure."""


class GraderError(PipelineError):
    """The grading service failed or was unreachable. Infrastructure."""


class TaskError(PipelineError):
    """A dataset row or scenario is malformed."""


# Errors that say nothing about the model's skill: retried, then reported as a failed rollout,
# never scored as a reward of 0.
INFRASTRUCTURE_ERRORS: tuple[type[PipelineError], ...] = (EndpointError, SandboxError, GraderError)
