"""The context budget: what the next request sends, trimmed of its oldest middle turns when it
would not fit `--max-context-tokens`.

Sizes come from the endpoint's usage where it gave them: the last request's `prompt_tokens`
counts everything sent so far, each assistant turn its `completion_tokens`, and an observation
its share of the next prompt's growth; only text the endpoint has not counted yet (a new
observation, the trim note) is estimated. Trimming keeps the
system prompt, the task message and the most recent turn, puts a short note in place of what was
dropped, and drops down to `TRIM_TARGET` of the budget so that one trim buys several turns (each
trim starts a new trained segment).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HEAD = 2  # system prompt and task message: never dropped
TRIM_TARGET = 0.75  # of the budget, after a trim
MESSAGE_OVERHEAD = 8  # chat-template tokens around one message (role markers, separators)


def estimate_tokens(text: str) -> int:
    """A cautious count for text the endpoint has not tokenized yet: code and logs run at about
    3 to 4 characters a token, so 3 over-counts rather than under-counts."""
    return len(text) // 3 + MESSAGE_OVERHEAD


def trim_note(turns: int) -> dict[str, Any]:
    return {
        "role": "user",
        "content": f"[{turns} earlier turns were dropped to fit the context budget; "
        "the REPL still holds their variables]",
    }


@dataclass
class Context:
    """The conversation as the next request sends it, with a token size for each message."""

    messages: list[dict[str, Any]]
    sizes: list[int] = field(default_factory=list)
    dropped_turns: int = 0
    _prompt_tokens: int = 0  # of the last request, from the endpoint
    _sent: int = 0  # messages the last request carried
    _trimmed: bool = False  # since the last answer: the next count is not the last one plus growth

    def __post_init__(self) -> None:
        self.sizes = [estimate_tokens(str(m.get("content") or "")) for m in self.messages]

    def request(self) -> list[dict[str, Any]]:
        """The messages to send now (a copy: later trims never rewrite what was sent)."""
        self._sent = len(self.messages)
        return [dict(m) for m in self.messages]

    def answered(self, content: str, prompt_tokens: int, completion_tokens: int) -> None:
        """The endpoint answered the last request: its count replaces our estimates."""
        if self._sent == HEAD and prompt_tokens:
            self.sizes[:HEAD] = _split(prompt_tokens, self.sizes[:HEAD])
        elif prompt_tokens and self._prompt_tokens and not self._trimmed:
            # This prompt is the last one plus the last reply and its observation.
            reply = self.sizes[self._sent - 2]
            self.sizes[self._sent - 1] = max(0, prompt_tokens - self._prompt_tokens - reply)
        self._trimmed = False
        if prompt_tokens:
            self._prompt_tokens = prompt_tokens
        else:  # an endpoint without usage: our estimates stand in for it
            self._prompt_tokens = sum(self.sizes[: self._sent])
        self.messages.append({"role": "assistant", "content": content})
        self.sizes.append(completion_tokens + MESSAGE_OVERHEAD)

    def observe(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.sizes.append(estimate_tokens(str(message.get("content") or "")))

    def next_prompt_tokens(self) -> int:
        """What the next request would count: the last prompt plus everything added since."""
        return self._prompt_tokens + sum(self.sizes[self._sent :])

    def trim(self, budget: int, target: float = TRIM_TARGET) -> bool | None:
        """Fit the next request into `budget`. False: it fits as it is; True: the oldest middle
        turns were dropped (the messages now start a new segment); None: even the system prompt,
        the task and the last turn do not fit."""
        expected = self.next_prompt_tokens()
        if expected <= budget:
            return False
        return self.drop_middle(expected, int(budget * target), budget)

    def drop_middle(self, expected: int, target: int, budget: int) -> bool | None:
        """Drop whole turns (assistant reply and its observation), oldest first, until `expected`
        is under `target`; None when the kept minimum is still over `budget`."""
        first = HEAD + (1 if self.dropped_turns else 0)  # after the previous trim's note
        keep_from = len(self.messages) - 2  # the last turn stays
        if self.dropped_turns:
            expected -= self.sizes[HEAD]
        cut = first
        while cut < keep_from and expected > target:
            expected -= self.sizes[cut] + self.sizes[cut + 1]
            cut += 2
        turns = (cut - first) // 2
        note = trim_note(self.dropped_turns + turns)
        expected += estimate_tokens(note["content"])
        if turns == 0 or expected > budget:
            return None
        self.dropped_turns += turns
        self.messages = [*self.messages[:HEAD], note, *self.messages[cut:]]
        self.sizes = [*self.sizes[:HEAD], estimate_tokens(note["content"]), *self.sizes[cut:]]
        # Nothing of the trimmed list was sent yet: the next count is all ours until answered.
        self._prompt_tokens, self._sent = sum(self.sizes), len(self.messages)
        self._trimmed = True
        return True

    def drop_all_middle(self) -> bool:
        """The endpoint refused the prompt as too long (our estimate was short): keep only the
        minimum. False when there was nothing left to drop."""
        return bool(self.drop_middle(self.next_prompt_tokens(), 0, 1 << 62))


def _split(total: int, estimates: list[int]) -> list[int]:
    """Share an exact total among messages in proportion to their estimates."""
    whole = sum(estimates) or 1
    shares = [total * e // whole for e in estimates]
    shares[-1] += total - sum(shares)
    return shares
