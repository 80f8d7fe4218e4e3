"""Replies posted ahead of their result (`rollout_workers.replies`), on the trainer's side: each
is built into ART's `Choice` when it arrives and kept, by stream entry id, until its result
claims it. Keeping is a cache, never the only copy: a reply no longer kept (the oldest go past
`KEPT_TOKENS`, a restarted trainer has none) is read from the stream again by its result.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from openai.types.chat.chat_completion import Choice

from common.errors import WireError
from common.garbage import no_gc
from common.wire import ChoicePart, decode
from trainer.trajectories import packed_choice

KEPT_TOKENS = 16 << 20  # built replies kept for their results (~8 GB); older: refetched


class PartMissing(LookupError):
    """A result refers to a reply that is not (or no longer) on the stream."""


class BuiltReplies:
    """Replies built on arrival, by entry id, until their result claims them (thread-safe: the
    builder thread adds and claims, the loop forgets those of settled groups)."""

    def __init__(self, max_tokens: int = KEPT_TOKENS) -> None:
        self.max_tokens = max_tokens
        self.tokens = 0
        self._lock = threading.Lock()
        self._parts: OrderedDict[str, tuple[str, Choice, int]] = OrderedDict()

    def add(self, entry_id: str, rollout_id: str, choice: Choice) -> None:
        tokens = len(choice.logprobs.content) if choice.logprobs and choice.logprobs.content else 0
        with self._lock:
            self._parts[entry_id] = (rollout_id, choice, tokens)
            self.tokens += tokens
            while self.tokens > self.max_tokens and len(self._parts) > 1:
                self.tokens -= self._parts.popitem(last=False)[1][2]  # the oldest: refetched

    def claim(self, entry_id: str) -> tuple[str, Choice] | None:
        with self._lock:
            kept = self._parts.pop(entry_id, None)
            if kept is None:
                return None
            self.tokens -= kept[2]
            return kept[0], kept[1]

    def forget(self, entry_ids: list[str]) -> None:
        with self._lock:
            for entry_id in entry_ids:
                kept = self._parts.pop(entry_id, None)
                if kept is not None:
                    self.tokens -= kept[2]

    def __len__(self) -> int:
        return len(self._parts)


def build_reply(fields: dict) -> tuple[ChoicePart, Choice]:
    """A `ChoicePart` stream entry's fields -> the part, and its reply as ART's `Choice`."""
    part = decode(fields[b"part"], ChoicePart)
    if part.item.kind != "packed":
        raise WireError(f"a ChoicePart holds a reply, not a {part.item.kind!r} item")
    with no_gc():
        return part, packed_choice(part.item.data)
