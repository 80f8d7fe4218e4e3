"""Posting a long policy reply the moment it arrives, before its rollout ends.

A rollout's replies are most of its bytes, and building their per-token ART objects is most of
the trainer's work on it (~1 us a token). Sent only with the result, a 30-turn rollout of long
replies lands on the trainer all at once and waits ~0.1 s to be built after it was posted. Posted
one by one as `ChoicePart`s on the results stream, each is built while the rollout goes on; the
result then carries only a reference (its stream entry id), and is ready as soon as it lands.

Posting is an optimisation, never a dependency: a reply whose post fails travels inline with the
result, as short replies always do. A part whose result never comes (the rollout failed, was
cancelled or retried) is acknowledged by the trainer with its group.
"""

from __future__ import annotations

import logging
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from common import keys
from common.errors import WireError
from common.wire import ChoicePart, RolloutJob, WireItem, encode
from rollout_workers.outcome import inline_reply

log = logging.getLogger(__name__)


class ReplyPoster:
    """Makes each policy reply of one rollout a trajectory item, posting the long ones."""

    def __init__(self, connection: Redis, job: RolloutJob, rollout_index: int) -> None:
        self.connection, self.job, self.rollout_index = connection, job, rollout_index
        self.min_tokens = job.limits.post_replies_over_tokens

    def item(self, choice: dict[str, Any]) -> WireItem:
        if self.min_tokens < 0 or _completion_tokens(choice) < self.min_tokens:
            return inline_reply(choice)
        job = self.job
        part = ChoicePart(
            run_id=job.run_id,
            rollout_id=keys.rollout_id(job.job_id, self.rollout_index),
            step=job.step,
            group_index=job.group_index,
            rollout_index=self.rollout_index,
            item=inline_reply(choice),
        )
        try:
            entry_id = self.connection.xadd(job.results_stream, {"part": encode(part)})
        except (RedisError, WireError) as exc:
            log.warning("a reply of %s goes with its result instead: %s", part.rollout_id, exc)
            return inline_reply(choice)
        entry_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        # Only the reference stays: the worker keeps none of the reply's per-token data.
        return WireItem(kind="part", data={"id": entry_id})


def _completion_tokens(choice: dict[str, Any]) -> int:
    content = (choice.get("logprobs") or {}).get("content")
    return len(content) if isinstance(content, list) else 0
