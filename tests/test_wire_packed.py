"""Wire v3: choices with their per-token data packed come back exactly as vLLM sent them."""

from __future__ import annotations

import contextlib
import copy
import math
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat.chat_completion import Choice

from common import packed
from common.errors import WireError
from common.wire import RolloutResult, WireItem, WireTrajectory, decode, encode
from trainer.collector import rebuild_problem
from trainer.trajectories import to_art_trajectory

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
float32 = st.floats(width=32, allow_nan=False).map(float)
float64 = st.floats(allow_nan=False)
token_id = st.integers(0, 2**31 - 1).map(lambda i: f"token_id:{i}")
odd_token = st.one_of(
    text,
    st.sampled_from(["token_id:007", "token_id:-1", "token_id:", "token_id:+5", "token_id:٣"]),
    st.integers(2**31, 2**40).map(lambda i: f"token_id:{i}"),
)
byte_lists = st.none() | st.lists(st.integers(0, 255), max_size=6)


@st.composite
def top_entry(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "token": draw(token_id | odd_token),
        "logprob": draw(float32 | float64),
        "bytes": draw(byte_lists),
    }


@st.composite
def vllm_choices(draw: st.DrawFn) -> dict[str, Any]:
    """`choices[0]` as vLLM answers it, plus the unusual cases a wire must survive."""
    count = draw(st.integers(1, 30))
    pieces = draw(st.lists(text, min_size=count, max_size=count))
    tokens = draw(
        st.sampled_from(["ids", "odd", "mixed"]).flatmap(
            lambda kind: st.lists(
                {"ids": token_id, "odd": odd_token, "mixed": token_id | odd_token}[kind],
                min_size=count,
                max_size=count,
            )
        )
    )
    exact32 = draw(st.booleans())
    bytes_mode = draw(st.sampled_from(["content", "none", "some_none", "random"]))
    with_top = draw(st.booleans())
    content = []
    for i in range(count):
        token_bytes: Any = {
            "content": list(pieces[i].encode()),
            "none": None,
            "some_none": None if i % 2 else list(pieces[i].encode()),
            "random": draw(byte_lists),
        }[bytes_mode]
        content.append(
            {
                "token": tokens[i],
                "logprob": draw(float32 if exact32 else float64),
                "bytes": token_bytes,
                "top_logprobs": draw(st.lists(top_entry(), max_size=3)) if with_top else [],
            }
        )
    message: dict[str, Any] = {
        "role": "assistant",
        "content": draw(st.sampled_from(["".join(pieces), None, ""]) | text),
        "tool_calls": None,
    }
    if draw(st.booleans()):
        message["tool_calls"] = [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ]
    choice: dict[str, Any] = {
        "index": 0,
        "message": message,
        "logprobs": {"content": content},
        "finish_reason": draw(st.sampled_from(["stop", "length", "tool_calls"])),
        "stop_reason": draw(st.none() | st.integers(0, 10**6) | text),
    }
    ids_mode = draw(st.sampled_from(["same", "absent", "other"]))
    if ids_mode == "same" and all(t.startswith("token_id:") for t in tokens):
        with contextlib.suppress(ValueError):
            choice["token_ids"] = [int(t[9:]) for t in tokens]
    elif ids_mode == "other":
        choice["token_ids"] = draw(st.lists(st.integers(0, 2**40), max_size=5))
    if draw(st.integers(0, 9)) == 0:  # a per-token entry not quite vLLM's shape: travels raw
        content[0] = draw(
            st.sampled_from(
                [
                    content[0] | {"extra": 1},
                    content[0] | {"logprob": 0},
                    {k: v for k, v in content[0].items() if k != "bytes"},
                ]
            )
        )
    return choice


def _round_trip(choices: list[dict[str, Any]]) -> list[Any]:
    items = [WireItem(kind="message", data={"role": "user", "content": "go"})]
    items += [WireItem(kind="choice", data=copy.deepcopy(c)) for c in choices]
    result = RolloutResult(
        run_id="r", job_id="j", rollout_id="j-r0", step=0, group_index=0, rollout_index=0,
        instance_id="i", policy_step=0, status="ok",
        trajectory=WireTrajectory(messages_and_choices=items, reward=1.0),
        enqueued_at=0.0, started_at=0.0, finished_at=0.0,
    )  # fmt: skip
    wire = decode(encode(result), RolloutResult).trajectory
    assert [i.kind for i in wire.messages_and_choices] == ["message"] + ["packed"] * len(choices)
    assert [i.choice() for i in wire.messages_and_choices[1:]] == choices
    return to_art_trajectory(wire).messages_and_choices[1:]


def _same(rebuilt: Choice, raw: dict[str, Any]) -> None:
    expected = Choice.model_validate(raw)
    assert type(rebuilt) is Choice
    assert rebuilt == expected
    assert rebuilt.model_dump() == expected.model_dump()
    assert rebuilt.model_dump_json() == expected.model_dump_json()
    assert rebuilt.model_extra == expected.model_extra  # vLLM's stop_reason, token_ids
    for got, want in zip(rebuilt.logprobs.content, expected.logprobs.content, strict=True):
        assert got.token == want.token
        assert struct.pack("<d", got.logprob) == struct.pack("<d", want.logprob)  # bit for bit


@settings(max_examples=300, deadline=None)
@given(st.lists(vllm_choices(), min_size=1, max_size=3))
def test_packed_choices_rebuild_exactly(raws: list[dict[str, Any]]) -> None:
    for rebuilt, raw in zip(_round_trip(raws), raws, strict=True):
        _same(rebuilt, raw)


@pytest.mark.slow
def test_a_long_answer_packs_small_and_exact() -> None:
    pieces = ["def", " f", "(x", "):", "\n   ", " return", " x", " +", " ü", "🙂"] * 12_000
    content = [
        {
            "token": f"token_id:{(i * 7919) % 151_000}",
            "logprob": float(struct.unpack("<f", struct.pack("<f", -i / 997))[0]),
            "bytes": list(p.encode()),
            "top_logprobs": [],
        }
        for i, p in enumerate(pieces)
    ]
    raw = {
        "index": 0,
        "message": {"role": "assistant", "content": "".join(pieces)},
        "logprobs": {"content": content},
        "finish_reason": "length",
        "stop_reason": None,
        "token_ids": [int(c["token"][9:]) for c in content],
    }
    body = msgpack.packb(packed.pack_choice(raw))
    text_bytes = len(raw["message"]["content"].encode())
    assert len(body) < 8.01 * len(pieces) + text_bytes  # 3 id + 4 logprob + 1 length + text
    (rebuilt,) = _round_trip([raw])
    _same(rebuilt, raw)


def _one_token(logprob: float) -> dict[str, Any]:
    token = {"token": "a", "logprob": logprob, "bytes": None, "top_logprobs": []}
    return {
        "index": 0,
        "message": {"role": "assistant", "content": "a"},
        "logprobs": {"content": [token]},
        "finish_reason": "stop",
    }


def test_float64_logprobs_stay_float64() -> None:
    data = packed.pack_choice(_one_token(-0.1))
    assert data["lpw"] == 8 and "tok" in data
    assert packed.unpack_choice(data) == _one_token(-0.1)
    assert packed.pack_choice(_one_token(-0.5))["lpw"] == 4  # float32-exact: 4 bytes
    zero = packed.unpack_choice(packed.pack_choice(_one_token(-0.0)))
    assert math.copysign(1, zero["logprobs"]["content"][0]["logprob"]) == -1


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (lambda d: d.update(n=d["n"] + 1), "packed array"),
        (lambda d: d.update(lpw=2), "logprob width"),
        (lambda d: d.update(bl=d["bl"][:-1]), "packed array"),
        (lambda d: d.update(bb=b"x"), "do not add up"),
        (lambda d: d.pop("head"), "without its head"),
        (lambda d: d.update(ids=None), "packed array"),
        (lambda d: d.update(finish_reason="abort"), "unknown fields"),
        (lambda d: d.update(tc=b"\0\0\0\0" * 2, top={"n": 0, "x": 1}), "do not add up"),
    ],
)
def test_damaged_packed_choices_are_quarantined(damage: Any, error: str) -> None:
    raw = {
        "index": 0,
        "message": {"role": "assistant", "content": "ab"},
        "logprobs": {
            "content": [
                {"token": f"token_id:{i}", "logprob": -1.0, "bytes": [97 + i], "top_logprobs": []}
                for i in range(2)
            ]
        },
        "finish_reason": "stop",
    }
    data = packed.pack_choice(raw)
    damage(data)
    item = WireItem(kind="packed", data=data)
    with pytest.raises(packed.PackError, match=error):
        to_art_trajectory(WireTrajectory(messages_and_choices=[item], reward=0.0))
    problem = rebuild_problem(WireTrajectory(messages_and_choices=[item], reward=0.0))
    assert problem is not None and error in problem


def test_large_bodies_travel_compressed_and_damage_is_a_wire_error() -> None:
    words = " ".join(["def f(x):\n    return x + 1\n"] * 3000)
    item = WireItem(kind="message", data={"role": "user", "content": words})
    result = RolloutResult(
        run_id="r", job_id="j", rollout_id="j-r0", step=0, group_index=0, rollout_index=0,
        instance_id="i", policy_step=0, status="ok",
        trajectory=WireTrajectory(
            messages_and_choices=[item],
            reward=1.0,
        ),
        enqueued_at=0.0, started_at=0.0, finished_at=0.0,
    )  # fmt: skip
    data = encode(result)
    envelope = msgpack.unpackb(data)
    assert set(envelope) == {"v", "type", "zbody"} and len(data) < len(words) / 5
    assert decode(data, RolloutResult) == result
    broken = msgpack.packb(envelope | {"zbody": envelope["zbody"][:-9]})
    with pytest.raises(WireError, match="does not inflate"):
        decode(broken, RolloutResult)
    with pytest.raises(WireError, match="version 3"):
        decode(msgpack.packb(envelope | {"v": 2}), RolloutResult)


def test_unknown_versions_are_refused() -> None:
    with pytest.raises(WireError, match="schema version 4"):
        decode(msgpack.packb({"v": 4, "type": "rollout_result", "body": {}}), RolloutResult)
