"""Whether the trainer cancelled a group (`common.queue.cancel_group`): it settled the group
without waiting for these rollouts, so they stop and post nothing.

Checked when a job starts, before every policy request of a rollout (the agent's turns and its
sub-agents'), and again before grading and before posting. A cancelled rollout raises
`RolloutCancelled` out of its loop: its sandbox is torn down as usual, and the job counts it.
"""

from __future__ import annotations

import asyncio
import logging

from redis import Redis
from redis.exceptions import RedisError

from common.queue import is_group_cancelled

log = logging.getLogger(__name__)


class RolloutCancelled(Exception):
    """The rollout's group was cancelled: stop, grade nothing, post nothing."""


class GroupCancellation:
    """One per job, shared by its rollouts: one EXISTS per check until the key is seen; from
    then on every rollout of the job stops at its next check without asking Redis again."""

    def __init__(self, connection: Redis, job_id: str) -> None:
        self.connection, self.job_id = connection, job_id
        self.cancelled = False

    async def is_set(self) -> bool:
        if not self.cancelled:
            try:  # off the event loop: a Redis restart is ridden out without stalling rollouts
                self.cancelled = await asyncio.to_thread(
                    is_group_cancelled, self.connection, self.job_id
                )
            except RedisError as exc:  # not known to be cancelled: the rollout goes on
                log.warning("cannot read whether group %s was cancelled: %s", self.job_id, exc)
        return self.cancelled

    async def check(self) -> None:
        """Raise RolloutCancelled once the group is cancelled."""
        if await self.is_set():
            raise RolloutCancelled(f"group {self.job_id} was cancelled")
