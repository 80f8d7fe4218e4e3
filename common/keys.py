"""Every Redis key and id this project writes, built here and nowhere else."""

from __future__ import annotations

PREFIX = "rlm"
TRAINER_GROUP = "trainer"  # consumer group of the results stream
TRAINER_CONSUMER = "trainer"  # stable across restarts, so pending entries come back to us


def job_id(run_id: str, step: int, group_index: int) -> str:
    """Deterministic RQ job id of one scenario group: re-enqueueing after a crash finds it."""
    return f"{run_id}-s{step:06d}-g{group_index:04d}"


def attempt_job_id(job_id: str, attempt: int) -> str:
    """RQ job id of one attempt at a group: the group's id, then `-a<n>` for each rerun of
    rollouts that never arrived."""
    return job_id if attempt == 0 else f"{job_id}-a{attempt}"


def run_job_pattern(run_id: str) -> str:
    """Glob of every RQ job hash of a run (for the finished run's expiry)."""
    return f"rq:job:{run_id}-s*"


def run_key_patterns(run_id: str) -> list[str]:
    """Globs of every key a run leaves in Redis, for expiring them once it is finished."""
    return [
        f"{PREFIX}:{run_id}:*",
        f"{PREFIX}:posted:{run_id}-s*",
        f"{PREFIX}:lease:{run_id}-s*",
        f"{PREFIX}:cancelled:{run_id}-s*",
        run_job_pattern(run_id),
        f"rq:results:{run_id}-s*",
    ]


def rollout_id(job_id: str, rollout_index: int) -> str:
    """Deterministic id of one rollout; the trainer deduplicates on it."""
    return f"{job_id}-r{rollout_index:03d}"


def results_stream(run_id: str) -> str:
    """Redis Stream the workers post finished rollouts to; the trainer reads it as a group."""
    return f"{PREFIX}:{run_id}:results"


def dead_letters(run_id: str) -> str:
    """Stream keeping messages the trainer could not decode, for inspection."""
    return f"{PREFIX}:{run_id}:dead-letters"


def job_lease(job_id: str) -> str:
    """Renewed by the worker running the job; when it expires the trainer requeues the job."""
    return f"{PREFIX}:lease:{job_id}"


def group_cancelled(job_id: str) -> str:
    """Set (with an expiry) once the trainer has settled a group without waiting for the rest:
    workers running any attempt of it stop. Keyed by the group's job id, so it covers every
    attempt (`attempt_job_id`)."""
    return f"{PREFIX}:cancelled:{job_id}"


def posted_rollouts(job_id: str) -> str:
    """Set of rollout indexes of a job already posted, so a rerun job skips them."""
    return f"{PREFIX}:posted:{job_id}"


def trainer_status(run_id: str) -> str:
    """Hash the trainer keeps current: step, phase, groups in flight."""
    return f"{PREFIX}:{run_id}:status"
