"""The edge between the wire format and ART: `WireTrajectory` <-> `art.Trajectory`.

Choices are rebuilt with `Choice.model_validate` from their raw JSON (logprobs, `token_id:N`
tokens, tool calls and vLLM's extra fields intact) and groups through the `TrajectoryGroup`
constructor: pydantic's JSON round trip would turn Choices into untrainable dicts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import art
from openai.types.chat.chat_completion import Choice

from common.wire import WireHistory, WireItem, WireTrajectory


def _items_to_art(items: list[WireItem]) -> list[Any]:
    return [Choice.model_validate(i.data) if i.kind == "choice" else dict(i.data) for i in items]


def _items_from_art(messages_and_choices: Iterable[Any]) -> list[WireItem]:
    items = []
    for entry in messages_and_choices:
        if isinstance(entry, Choice):
            items.append(WireItem(kind="choice", data=entry.model_dump(mode="json")))
        else:
            items.append(WireItem(kind="message", data=dict(entry)))
    return items


def to_art_trajectory(wire: WireTrajectory) -> art.Trajectory:
    return art.Trajectory(
        messages_and_choices=_items_to_art(wire.messages_and_choices),
        tools=wire.tools,
        additional_histories=[
            art.trajectories.History(
                messages_and_choices=_items_to_art(h.messages_and_choices), tools=h.tools
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
