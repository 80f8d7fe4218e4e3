"""Rollouts shaped like vLLM's answers, and their encodings per wire version, for the ingest
benchmarks (`ingest_scale.py`, `ingest_e2e.py`).

Every completion token is `token_id:N` (N from a 151k vocabulary) with a float32 logprob and
its bytes; choices carry vLLM's `token_ids` and `stop_reason` extra fields.
"""

from __future__ import annotations

import argparse
import random
import struct
import time
import zlib
from typing import Any

import msgpack

from common import wire
from common.wire import (
    ChoicePart,
    RolloutResult,
    WireHistory,
    WireItem,
    WireTrajectory,
    encode,
)
from trainer.collector import Received

RUN_ID = "ingest"
PIECES = [
    "def", " ", "self", ".", "_", "(", ")", ":", "\n", "    ", "return", " x", " =", " None",
    " if", " not", " in", " for", " i", " range", "(len", "),", " '", "',", " \"", "pandas",
    " import", " numpy", " as", " np", "\n\n", " #", " the", " fix", " é", "→", "🙂", "```",
    "python", "print", "(df", ".loc", "[", "]", " ==", " True", " False", " raise", " Error",
]  # fmt: skip


def _f32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def make_choice(rng: random.Random, tokens: int) -> dict[str, Any]:
    """`choices[0]` as ART's vLLM returns it (logprobs computed in float32, as vLLM does)."""
    pieces = [rng.choice(PIECES) for _ in range(tokens)]
    ids = [rng.randrange(151_000) for _ in range(tokens)]
    content = [
        {
            "token": f"token_id:{t}",
            "logprob": _f32(-rng.expovariate(3.0)),
            "bytes": list(p.encode()),
            "top_logprobs": [],
        }
        for t, p in zip(ids, pieces, strict=True)
    ]
    return {
        "index": 0,
        "message": {"role": "assistant", "content": "".join(pieces), "tool_calls": []},
        "logprobs": {"content": content},
        "finish_reason": "stop",
        "stop_reason": None,
        "token_ids": ids,
    }


def _turns(rng: random.Random, turns: int, tokens: int) -> list[WireItem]:
    items = [
        WireItem(kind="message", data={"role": "system", "content": "You are a coder." * 50}),
        WireItem(kind="message", data={"role": "user", "content": "Fix the bug. " * 100}),
    ]
    for _ in range(turns):
        items.append(WireItem(kind="choice", data=make_choice(rng, tokens)))
        items.append(WireItem(kind="message", data={"role": "user", "content": "out " * 200}))
    return items


def make_trajectory(args: argparse.Namespace, seed: int) -> WireTrajectory:
    rng = random.Random(seed)
    return WireTrajectory(
        messages_and_choices=_turns(rng, args.turns, args.tokens),
        additional_histories=[
            WireHistory(messages_and_choices=_turns(rng, args.sub_turns, args.tokens))
            for _ in range(args.sub_agents)
        ],
        reward=1.0,
        metrics={"steps": args.turns},
    )


def completion_tokens(args: argparse.Namespace) -> int:
    return args.tokens * (args.turns + args.sub_agents * args.sub_turns)


def encode_as(result: RolloutResult, version: int) -> bytes:
    """The result as wire `version` encodes it (5: the current encoder; with its replies
    posted ahead, see `replies_ahead`, only references to them; 4 is 5's layout)."""
    if version in (4, 5):
        return encode(result)
    if version == 3:  # packed choices, the whole body compressed (v3's encode)
        arrays = wire._Arrays()
        fields = wire._body(result, arrays)
        arrays.restore()  # the arrays inline
        body = msgpack.packb(fields, use_bin_type=True)
        if len(body) > wire.COMPRESS_OVER:
            zbody = zlib.compress(body, 1)
            if len(zbody) < 0.9 * len(body):
                envelope = {"v": 3, "type": "rollout_result", "zbody": zbody}
                return msgpack.packb(envelope, use_bin_type=True)
        return msgpack.packb({"v": 3, "type": "rollout_result", "body": fields}, use_bin_type=True)
    # v1/v2: the body as pydantic dumps it, one map per token (what workers sent before v3)
    envelope = {"v": version, "type": "rollout_result", "body": result.model_dump()}
    return msgpack.packb(envelope, use_bin_type=True)


def make_result(trajectory: WireTrajectory, worker: int, index: int) -> RolloutResult:
    now = time.time()
    return RolloutResult(
        run_id=RUN_ID, job_id=f"w{worker}", rollout_id=f"w{worker}-{index}", step=0,
        group_index=worker, rollout_index=index, instance_id="bench", policy_step=0,
        status="ok", trajectory=trajectory, enqueued_at=now, started_at=now, finished_at=now,
    )  # fmt: skip


def replies_ahead(result: RolloutResult) -> list[bytes]:
    """Each reply of the result as the `ChoicePart` a worker posts when it arrives (wire v5),
    in trajectory order (main conversation, then histories)."""
    assert result.trajectory is not None
    return [
        encode(
            ChoicePart(
                run_id=result.run_id,
                rollout_id=result.rollout_id,
                step=result.step,
                group_index=result.group_index,
                rollout_index=result.rollout_index,
                item=item,
            )  # fmt: skip
        )
        for items in _conversations(result.trajectory)
        for item in items
        if item.kind == "choice"
    ]


def referring_to(result: RolloutResult, part_ids: list[str]) -> RolloutResult:
    """The result with its replies replaced by references to their posted parts, in the order
    `replies_ahead` gave them."""
    assert result.trajectory is not None
    ids = iter(part_ids)

    def refer(items: list[WireItem]) -> list[WireItem]:
        return [
            WireItem(kind="part", data={"id": next(ids)}) if i.kind == "choice" else i
            for i in items
        ]

    trajectory = result.trajectory
    referred = trajectory.model_copy(
        update={
            "messages_and_choices": refer(trajectory.messages_and_choices),
            "additional_histories": [
                h.model_copy(update={"messages_and_choices": refer(h.messages_and_choices)})
                for h in trajectory.additional_histories
            ],
        }
    )
    return result.model_copy(update={"trajectory": referred, "finished_at": time.time()})


def _conversations(trajectory: WireTrajectory) -> list[list[WireItem]]:
    return [trajectory.messages_and_choices] + [
        h.messages_and_choices for h in trajectory.additional_histories
    ]


def entries_of(received: Received) -> list[str]:
    """The result's entry and those of its replies posted ahead (acknowledged together, as a
    trainer does when their step is checkpointed: acknowledging forgets a built reply)."""
    trajectory = received.result.trajectory
    assert trajectory is not None
    items = [i for items in _conversations(trajectory) for i in items]
    return [received.entry_id] + [i.data["id"] for i in items if i.kind == "part"]
