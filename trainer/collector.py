"""Reads finished rollouts from the results stream through a Redis consumer group.

After a restart the trainer first re-reads the entries delivered to it but never acknowledged,
then new ones. Entries are acknowledged, and deleted from the stream, by the loop only once the
step that used them is checkpointed. A message that does not decode, or whose trajectory cannot
be rebuilt into ART's types, is quarantined: copied to the dead-letter stream with the reason,
logged, acknowledged and deleted. When the message names its rollout, the loop reruns it. One
bad entry never stops the trainer.

Ingest runs beside the caller (`trainer.ingest.ReadAhead`): a reader thread keeps reading the
stream while a builder thread decodes each entry and builds its ART objects (~1 us a token: a
120k-token rollout is ~0.1 s of CPU), so neither the training loop nor the reader waits for a
build; `poll` only waits for what is built. A Redis failure in either thread (past the client's
retries) is raised by the next `poll`.

Long policy replies may arrive before their result, as `ChoicePart` entries
(`rollout_workers.replies`): each is built on arrival and kept until its result claims it by
entry id (a reply no longer kept, or never read, is fetched from the stream then). A part is
handed to the loop as `PartReceived`, so that it is acknowledged with its group, claimed or not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import art
from openai.types.chat.chat_completion import Choice
from redis import Redis
from redis.exceptions import RedisError, ResponseError

from common import keys
from common.errors import WireError
from common.garbage import freeze_heap
from common.wire import RolloutResult, WireTrajectory, decode
from trainer.ingest import PAUSE, ReadAhead
from trainer.replies import BuiltReplies, PartMissing, build_reply
from trainer.trajectories import PartResolver, to_art_trajectory

log = logging.getLogger(__name__)

DEAD_LETTERS_KEPT = 10_000  # the dead-letter stream is capped at about this many entries
READ_BLOCK_MS = 200  # the reader's wait for new entries (it checks for a stop between waits)

Entry = tuple[str, dict]  # a stream entry: id, fields


@dataclass(frozen=True)
class Received:
    entry_id: str
    result: RolloutResult
    trajectory: art.Trajectory | None = None  # ART's objects, built once at the boundary


@dataclass(frozen=True)
class Rejected:
    """A quarantined result that named its rollout, so it can be rerun."""

    step: int
    group_index: int
    rollout_index: int
    reason: str


@dataclass(frozen=True)
class PartReceived:
    """A reply posted ahead of its result: acknowledged with its group."""

    entry_id: str
    step: int
    group_index: int


@dataclass
class Polled:
    received: list[Received] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    parts: list[PartReceived] = field(default_factory=list)


class ResultCollector:
    def __init__(self, connection: Redis, run_id: str) -> None:
        self.connection = connection
        self.stream = keys.results_stream(run_id)
        self.dead_letter_stream = keys.dead_letters(run_id)
        self.dead_letters = 0
        self._backlog_cursor: str | None = "0"  # None once our unacknowledged backlog is read
        self.parts = BuiltReplies()
        self._create_group()
        freeze_heap()  # the trainer's imports out of the cycle collector's way (common.garbage)
        self._ahead: ReadAhead[Entry, Received | Rejected | PartReceived] = ReadAhead(
            f"ingest {self.stream}", self._fetch, self._ingest, _entry_size
        )

    def _create_group(self) -> None:
        try:
            self.connection.xgroup_create(self.stream, keys.TRAINER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def poll(self, block_ms: int, count: int = 256) -> Polled:
        """Entries not yet acknowledged, with their ART objects built: our backlog first, then
        new ones. Waits up to block_ms for the first; returns at most `count`."""
        self._regroup()
        polled = Polled()
        for item in self._ahead.take(block_ms / 1000, count):
            if isinstance(item, Received):
                polled.received.append(item)
            elif isinstance(item, PartReceived):
                polled.parts.append(item)
            else:
                polled.rejected.append(item)
        self._regroup()
        return polled

    def ack(self, entry_ids: list[str]) -> None:
        """Acknowledge entries and delete them from the stream: their step is checkpointed."""
        self.parts.forget(entry_ids)  # replies no result claimed (their rollout was rerun)
        if entry_ids:
            with self.connection.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, keys.TRAINER_GROUP, *entry_ids)
                pipe.xdel(self.stream, *entry_ids)
                pipe.execute()

    def close(self) -> None:
        """Stop reading and building (what was read and not handed out stays pending in the
        consumer group: a restarted trainer reads it again)."""
        self._ahead.close()

    def _regroup(self) -> None:
        """The reader found the group gone (paused): recreate it here, in the caller's thread,
        so a reader nobody polls any more never writes to Redis."""
        if self._ahead.paused:
            # Redis came back without its data: the group starts again from the stream's start
            # (what is missing is rerun by the dispatcher's deadlines).
            log.error(
                "the results stream's consumer group is gone (Redis lost its data); recreating it"
            )
            self._create_group()
            self._ahead.resume()

    def _fetch(self, count: int) -> list[Entry] | None:
        """The reader thread: our backlog first, then new entries (waiting READ_BLOCK_MS)."""
        backlog = self._backlog_cursor
        try:
            reply = self.connection.xreadgroup(
                keys.TRAINER_GROUP,
                keys.TRAINER_CONSUMER,
                {self.stream: backlog or ">"},
                count=count,
                block=None if backlog else READ_BLOCK_MS,
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                raise
            self._backlog_cursor = None
            return PAUSE  # until poll() recreates the group
        entries = reply[0][1] if reply else []
        if backlog:
            self._backlog_cursor = _text(entries[-1][0]) if entries else None
        # An entry deleted while pending comes back without fields: acknowledge it away.
        gone = [_text(entry_id) for entry_id, fields in entries if fields is None]
        if gone:
            self.connection.xack(self.stream, keys.TRAINER_GROUP, *gone)
        return [(_text(entry_id), fields) for entry_id, fields in entries if fields is not None]

    def _ingest(self, entry: Entry) -> Received | Rejected | PartReceived | None:
        """The builder thread: decode and build ART's objects, or quarantine."""
        entry_id, fields = entry
        if b"part" in fields:
            return self._ingest_part(entry_id, fields)
        try:
            result = decode(fields.get(b"data", b""), RolloutResult)
        except WireError as exc:
            self._dead_letter(entry_id, fields, str(exc))
            return None
        trajectory, problem = _rebuild(result, lambda part_id: self._claim(part_id, result))
        if problem is None:
            return Received(entry_id, result, trajectory)
        self._dead_letter(entry_id, fields, problem)
        return Rejected(result.step, result.group_index, result.rollout_index, problem)

    def _ingest_part(self, entry_id: str, fields: dict) -> PartReceived | None:
        try:
            part, choice = build_reply(fields)
        except Exception as exc:  # as for a result: one bad entry never stops the trainer
            self._dead_letter(entry_id, fields, f"reply cannot be rebuilt: {_first_lines(exc)}")
            return None
        self.parts.add(entry_id, part.rollout_id, choice)
        return PartReceived(entry_id, part.step, part.group_index)

    def _claim(self, entry_id: Any, result: RolloutResult) -> Choice:
        """A reply the result refers to: built on arrival, or fetched and built now."""
        if not isinstance(entry_id, str):
            raise PartMissing(f"a reply referred to by {entry_id!r:.50}, not an entry id")
        kept = self.parts.claim(entry_id)
        if kept is None:
            try:
                entries = self.connection.xrange(self.stream, entry_id, entry_id)
            except ResponseError as exc:  # not an entry id
                raise PartMissing(f"reply {entry_id!r:.50}: {exc}") from exc
            if not entries or not entries[0][1] or b"part" not in entries[0][1]:
                raise PartMissing(f"reply {entry_id} is not on the stream")
            part, choice = build_reply(entries[0][1])
            kept = part.rollout_id, choice
        if kept[0] != result.rollout_id:
            raise PartMissing(f"reply {entry_id} belongs to rollout {kept[0]}")
        return kept[1]

    def _dead_letter(self, entry_id: str, fields: dict, error: str) -> None:
        self.dead_letters += 1
        log.error("result %s rejected and kept in %s: %s", entry_id, self.dead_letter_stream, error)
        with self.connection.pipeline(transaction=True) as pipe:
            pipe.xadd(
                self.dead_letter_stream,
                {"source_id": entry_id, "error": error[:2000], **dict(fields)},
                maxlen=DEAD_LETTERS_KEPT,
                approximate=True,
            )
            pipe.xack(self.stream, keys.TRAINER_GROUP, entry_id)
            pipe.xdel(self.stream, entry_id)
            pipe.execute()


def _entry_size(entry: Entry) -> int:
    data = entry[1].get(b"data", entry[1].get(b"part"))
    return len(data) if isinstance(data, bytes) else 0


def _rebuild(
    result: RolloutResult, parts: PartResolver | None = None
) -> tuple[art.Trajectory | None, str | None]:
    """An ok result's trajectory as ART's types, or why it cannot become them (so it cannot
    train). Failed results carry none."""
    if result.status != "ok":
        return None, None
    if result.trajectory is None:
        return None, "an ok result without a trajectory"
    try:
        return to_art_trajectory(result.trajectory, parts), None
    except RedisError:
        raise  # fetching a reply failed: the reader's failure, not the result's
    except Exception as exc:  # pydantic, the packed format, or anything ART's constructors raise
        return None, f"trajectory cannot be rebuilt: {_first_lines(exc)}"


def _first_lines(exc: Exception) -> str:
    """The exception's type and the start of its message, on one line (pydantic's run long)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).strip().splitlines()[:3])}"


def rebuild_problem(trajectory: WireTrajectory) -> str | None:
    """Why a trajectory cannot become ART's types, or None."""
    return _rebuild(
        RolloutResult(
            run_id="",
            job_id="",
            rollout_id="",
            step=0,
            group_index=0,
            rollout_index=0,
            instance_id="",
            policy_step=0,
            status="ok",
            trajectory=trajectory,
            enqueued_at=0.0,
            started_at=0.0,
            finished_at=0.0,
        )  # fmt: skip
    )[1]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
