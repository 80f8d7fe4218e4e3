"""`RolloutOutcome`: what one rollout did, filled in as it goes by the agent loop
(`rollout_workers.rollout`) and the sub-agents it asks (`rollout_workers.sub_agents`).

A module of its own so that both write to it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.wire import WireHistory, WireItem


def inline_reply(choice: dict[str, Any]) -> WireItem:
    """A policy reply that travels with its rollout's result."""
    return WireItem(kind="choice", data=choice)


@dataclass
class RolloutOutcome:
    items: list[WireItem] = field(default_factory=list)
    histories: list[WireHistory] = field(default_factory=list)
    finished: bool = False
    truncated: bool = False
    time_limited: bool = False  # truncated by --rollout-time-limit-s
    steps: int = 0
    sub_queries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    repl_time_s: float = 0.0
    llm_time_s: float = 0.0
    request_retries: int = 0
    repl_restarts: int = 0
    context_trims: int = 0  # each one started a new segment (an additional history)
    diff: str = ""
    iterations: list[dict[str, Any]] = field(default_factory=list)  # RLM visualizer lines
    # A policy reply -> its trajectory item (`rollout_workers.replies` posts long ones now)
    reply_item: Callable[[dict[str, Any]], WireItem] = field(default_factory=lambda: inline_reply)
