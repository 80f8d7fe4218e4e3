"""The edge between the wire format and ART: `WireTrajectory` <-> `art.Trajectory`.

Choices are rebuilt with `Choice.model_validate` from their raw JSON (logprobs, `token_id:N`
tokens, tool calls and vLLM's extra fields intact) and groups through the `TrajectoryGroup`
constructor: pydantic's JSON round trip would turn Choices into untrainable dicts.

A packed choice (wire v3 on) is validated once, strictly, without its per-token entries; those
are then constructed directly from the packed columns, whose types and lengths `common.packed`
checks at the boundary (str tokens, float logprobs, lists of byte values). Validating each of
them again would cost ~1.4 us a token; building them here (in C) costs ~0.4 us.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import art
import token_columns
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob, TopLogprob
from pydantic import BaseModel

from common import packed
from common.garbage import no_gc
from common.wire import WireHistory, WireItem, WireTrajectory

# pydantic keeps a model's state in its `__dict__` (the field values) and three slots: the names
# of the fields set, the extra fields and the private attributes; `token_columns.build_models`
# fills them directly, as `model_construct` would, from columns of values checked at the boundary.
_SLOTS = tuple(
    BaseModel.__dict__[name]
    for name in ("__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
)
# Shared by every object built here: all fields are set, so pydantic never adds to it.
_TOKEN_FIELDS = set(ChatCompletionTokenLogprob.model_fields)
_TOP_FIELDS = set(TopLogprob.model_fields)


def _build(cls: type[BaseModel], fields: set[str], columns: dict[str, list[Any] | None]) -> list:
    """`[cls.model_construct(**row) for row in rows of columns]`, each object with its own
    extra-fields dict as validation gives, at a tenth of its cost; a None column gives each
    object a new empty list. The values must be valid already."""
    return token_columns.build_models(cls, tuple(columns), tuple(columns.values()), fields, _SLOTS)


def _tops(data: dict[str, Any]) -> list[list[TopLogprob]] | None:
    counts = packed.top_counts(data)
    if counts is None:
        return None
    cols = packed.Columns(data["top"], None)
    flat = _build(
        TopLogprob,
        _TOP_FIELDS,
        {"token": cols.tokens, "bytes": cols.bytes, "logprob": cols.logprobs},
    )
    out, at = [], 0
    for n in counts:
        out.append(flat[at : at + n])
        at += n
    return out


def packed_choice(data: dict[str, Any]) -> Choice:
    """A packed choice -> the `Choice` that `Choice.model_validate(raw)` gives."""
    packed.check_keys(data)
    if "raw" in data:
        return Choice.model_validate(data["raw"])
    head = packed.head_of(data)
    choice = Choice.model_validate(head | {"logprobs": head["logprobs"] | {"content": []}})
    cols = packed.Columns(data, head)
    columns = {"token": cols.tokens, "bytes": cols.bytes, "logprob": cols.logprobs}
    choice.logprobs.content = _build(
        ChatCompletionTokenLogprob, _TOKEN_FIELDS, columns | {"top_logprobs": _tops(data)}
    )
    return choice


PartResolver = Callable[[str], Choice]  # a posted part's stream entry id -> its Choice


def _items_to_art(items: list[WireItem], parts: PartResolver | None) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item.kind == "packed":
            out.append(packed_choice(item.data))
        elif item.kind == "part":
            if parts is None:
                raise ValueError("a trajectory with posted parts is rebuilt by the collector")
            out.append(parts(item.data["id"]))
        elif item.kind == "choice":
            out.append(Choice.model_validate(item.data))
        else:
            out.append(dict(item.data))
    return out


def _items_from_art(messages_and_choices: Iterable[Any]) -> list[WireItem]:
    items = []
    for entry in messages_and_choices:
        if isinstance(entry, Choice):
            items.append(WireItem(kind="choice", data=entry.model_dump(mode="json")))
        else:
            items.append(WireItem(kind="message", data=dict(entry)))
    return items


def to_art_trajectory(wire: WireTrajectory, parts: PartResolver | None = None) -> art.Trajectory:
    """`parts` gives the Choices of turns the worker posted as they ended (`kind="part"`)."""
    with no_gc():
        return _to_art_trajectory(wire, parts)


def _to_art_trajectory(wire: WireTrajectory, parts: PartResolver | None) -> art.Trajectory:
    return art.Trajectory(
        messages_and_choices=_items_to_art(wire.messages_and_choices, parts),
        tools=wire.tools,
        additional_histories=[
            art.trajectories.History(
                messages_and_choices=_items_to_art(h.messages_and_choices, parts), tools=h.tools
            )
            for h in wire.additional_histories
        ],
        reward=wire.reward,
        initial_policy_version=wire.initial_policy_version,
        final_policy_version=wire.final_policy_version,
        metrics=dict(wire.metrics),
        metadata=dict(wire.metadata),
        logs=list(wire.logs),
    )


def from_art_trajectory(trajectory: art.Trajectory) -> WireTrajectory:
    return WireTrajectory(
        messages_and_choices=_items_from_art(trajectory.messages_and_choices),
        tools=trajectory.tools,
        additional_histories=[
            WireHistory(messages_and_choices=_items_from_art(h.messages_and_choices), tools=h.tools)
            for h in trajectory.additional_histories
        ],
        reward=trajectory.reward,
        initial_policy_version=trajectory.initial_policy_version,
        final_policy_version=trajectory.final_policy_version,
        metrics=dict(trajectory.metrics),
        metadata=dict(trajectory.metadata),
        logs=list(trajectory.logs),
    )


def is_trainable(trajectory: art.Trajectory) -> bool:
    """ART trains on Choices that carry logprobs; a trajectory without one trains nothing."""
    choices = [m for m in trajectory.messages_and_choices if isinstance(m, Choice)]
    return bool(choices) and all(c.logprobs is not None and c.logprobs.content for c in choices)
