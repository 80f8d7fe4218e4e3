"""Wire v3: choices with their per-token data packed come back exactly as vLLM sent them."""

from __future__ import annotations

import contextlib
import copy
import math
import random
import re
import struct
import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat.chat_completion import Choice

from common import packed
from common.errors import WireError
from common.wire import SCHEMA_VERSION, RolloutResult, WireItem, WireTrajectory, decode, encode
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


def _result(*items: WireItem) -> RolloutResult:
    return RolloutResult(
        run_id="r", job_id="j", rollout_id="j-r0", step=0, group_index=0, rollout_index=0,
        instance_id="i", policy_step=0, status="ok",
        trajectory=WireTrajectory(messages_and_choices=list(items), reward=1.0),
        enqueued_at=0.0, started_at=0.0, finished_at=0.0,
    )  # fmt: skip


def test_large_bodies_travel_compressed_and_damage_is_a_wire_error() -> None:
    words = " ".join(["def f(x):\n    return x + 1\n"] * 3000)
    result = _result(WireItem(kind="message", data={"role": "user", "content": words}))
    data = encode(result)
    envelope = msgpack.unpackb(data)
    assert set(envelope) == {"v", "type", "zbody", "arrays"} and len(data) < len(words) / 5
    assert envelope["v"] == SCHEMA_VERSION and envelope["arrays"] == []
    assert decode(data, RolloutResult) == result
    broken = msgpack.packb(envelope | {"zbody": envelope["zbody"][:-9]})
    with pytest.raises(WireError, match="does not inflate"):
        decode(broken, RolloutResult)
    with pytest.raises(WireError, match="version 3, or version 4 or later with its arrays"):
        decode(msgpack.packb(envelope | {"v": 3}), RolloutResult)
    v3 = {k: v for k, v in envelope.items() if k != "arrays"}
    assert decode(msgpack.packb(v3 | {"v": 3}), RolloutResult) == result  # as v3 sent it
    with pytest.raises(WireError, match="version 3, or version 4 or later with its arrays"):
        decode(msgpack.packb(v3), RolloutResult)


def _long_answer(tokens: int, rng: random.Random | None = None) -> dict[str, Any]:
    """A long answer; with `rng`, vLLM-like ids and logprobs (a large vocabulary, float32
    values that barely compress), else repetitive ones (that compress well)."""
    pieces = ["def", " f", "(x", "):", "\n   ", " return", " x", " +", " ü", "🙂"] * (tokens // 10)
    ids = [rng.randrange(151_000) if rng else i % 10 * 977 for i in range(len(pieces))]
    logprobs = [-rng.expovariate(3.0) if rng else -(i % 10) / 8 for i in range(len(pieces))]
    return {
        "index": 0,
        "message": {"role": "assistant", "content": "".join(pieces)},
        "logprobs": {
            "content": [
                {
                    "token": f"token_id:{t}",
                    "logprob": struct.unpack("<f", struct.pack("<f", lp))[0],
                    "bytes": list(p.encode()),
                    "top_logprobs": [],
                }
                for t, lp, p in zip(ids, logprobs, pieces, strict=True)
            ]
        },
        "finish_reason": "length",
        "stop_reason": None,
        "token_ids": ids,
    }


def test_token_ids_and_logprobs_travel_beside_a_compressed_body() -> None:
    """v4: the arrays that do not compress are left out of zlib's way, referenced from the
    body; those that do stay in it. Everything comes back exact."""
    rng = random.Random(0)
    raws = [_long_answer(6_000, rng), _long_answer(4_000, rng)]
    result = _result(*[WireItem(kind="choice", data=copy.deepcopy(r)) for r in raws])
    data = encode(result)
    envelope = msgpack.unpackb(data, ext_hook=lambda code, data: (code, data))
    assert set(envelope) == {"v", "type", "zbody", "arrays"}
    sizes = [len(a) for a in envelope["arrays"]]
    assert sizes == [3 * 6_000, 4 * 6_000, 3 * 4_000, 4 * 4_000]  # uint24 ids, float32 logprobs
    assert len(data) < 9 * 10_000  # ~2 bytes a token of compressed text and lengths beside
    wire = decode(data, RolloutResult).trajectory
    assert [i.choice() for i in wire.messages_and_choices] == raws
    for rebuilt, raw in zip(to_art_trajectory(wire).messages_and_choices, raws, strict=True):
        _same(rebuilt, raw)
    regular = _long_answer(10_000)
    data = encode(_result(WireItem(kind="choice", data=copy.deepcopy(regular))))
    envelope = msgpack.unpackb(data)
    assert envelope["arrays"] == [] and len(data) < 4 * 10_000  # compressed with the body
    (item,) = decode(data, RolloutResult).trajectory.messages_and_choices
    assert item.choice() == regular


def _arrays_envelope() -> dict[str, Any]:
    data = encode(_result(WireItem(kind="choice", data=_long_answer(10_000, random.Random(1)))))
    return msgpack.unpackb(data)


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (lambda e: e.update(arrays=e["arrays"][:1]), "array 1 of 1"),
        (lambda e: e.update(arrays=[*e["arrays"][:1], "text"]), "are byte strings"),
        (lambda e: e.update(arrays={}), "are byte strings"),
        (lambda e: e.update(arrays=e["arrays"][::-1]), "cannot be rebuilt|broken"),
    ],
)
def test_damaged_arrays_are_refused(damage: Any, error: str) -> None:
    envelope = _arrays_envelope()
    damage(envelope)
    try:
        result = decode(msgpack.packb(envelope), RolloutResult)
    except WireError as exc:
        assert re.search(error, str(exc))
        return
    problem = rebuild_problem(result.trajectory)  # swapped arrays: the wrong lengths
    assert problem is not None and re.search(error, problem)


def test_extensions_outside_a_compressed_body_are_refused() -> None:
    ref = msgpack.ExtType(1, b"\0\0\0\0")
    body = {"v": 4, "type": "rollout_result", "body": {"step": ref}}
    with pytest.raises(WireError, match="not a msgpack envelope: array 0 of 0"):
        decode(msgpack.packb(body), RolloutResult)
    envelope = _arrays_envelope()
    inner = msgpack.unpackb(zlib.decompress(envelope["zbody"]), ext_hook=msgpack.ExtType)
    inner["step"] = msgpack.ExtType(7, b"")
    envelope["zbody"] = zlib.compress(msgpack.packb(inner))
    with pytest.raises(WireError, match="extension 7 is not an array reference"):
        decode(msgpack.packb(envelope), RolloutResult)


def test_unknown_versions_are_refused() -> None:
    with pytest.raises(WireError, match="schema version 6"):
        decode(msgpack.packb({"v": 6, "type": "rollout_result", "body": {}}), RolloutResult)
