"""Reads finished rollouts from the results stream through a Redis consumer group.

After a restart the trainer first re-reads the entries delivered to it but never acknowledged,
then new ones. Entries are acknowledged by the loop only once the step that used them is
checkpointed. A message that does not decode is copied to the dead-letter stream with the
reason, logged, and acknowledged: kept for inspection, never crashing the trainer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import ResponseError

from common import keys
from common.errors import WireError
from common.wire import RolloutResult, decode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    entry_id: str
    result: RolloutResult


class ResultCollector:
    def __init__(self, connection: Redis, run_id: str) -> None:
        self.connection = connection
        self.stream = keys.results_stream(run_id)
        self.dead_letter_stream = keys.dead_letters(run_id)
        self.dead_letters = 0
        self._backlog_cursor: str | None = "0"  # None once our unacknowledged backlog is read
        try:
            connection.xgroup_create(self.stream, keys.TRAINER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def poll(self, block_ms: int, count: int = 256) -> list[Received]:
        """Entries not yet acknowledged: our backlog first, then new ones (waiting block_ms)."""
        if self._backlog_cursor is not None:
            entries = self._read(self._backlog_cursor, count, block_ms=None)
            if entries:
                self._backlog_cursor = entries[-1][0]
            else:
                self._backlog_cursor = None
        else:
            entries = self._read(">", count, block_ms=block_ms)
        received = []
        for entry_id, fields in entries:
            try:
                received.append(Received(entry_id, decode(fields.get(b"data", b""), RolloutResult)))
            except WireError as exc:
                self._dead_letter(entry_id, fields, exc)
        return received

    def ack(self, entry_ids: list[str]) -> None:
        if entry_ids:
            self.connection.xack(self.stream, keys.TRAINER_GROUP, *entry_ids)

    def _read(self, cursor: str, count: int, block_ms: int | None) -> list[tuple[str, dict]]:
        reply = self.connection.xreadgroup(
            keys.TRAINER_GROUP,
            keys.TRAINER_CONSUMER,
            {self.stream: cursor},
            count=count,
            block=block_ms,
        )
        entries = reply[0][1] if reply else []
        return [(_text(entry_id), fields) for entry_id, fields in entries if fields is not None]

    def _dead_letter(self, entry_id: str, fields: dict, error: WireError) -> None:
        self.dead_letters += 1
        log.error("result %s rejected and kept in %s: %s", entry_id, self.dead_letter_stream, error)
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.xadd(
                self.dead_letter_stream,
                {
                    "source_id": entry_id,
                    "error": str(error)[:2000],
                    **{k: v for k, v in fields.items()},
                },
            )
            pipe.xack(self.stream, keys.TRAINER_GROUP, entry_id)
            pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
