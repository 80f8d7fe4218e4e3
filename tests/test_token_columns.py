"""The C loops of the wire codec (native/token_columns.c) against the Python they stand in for:
`pack_entries` must give exactly what the Python packer gives, or decline; `build_models`
exactly what pydantic's `model_construct` gives; `split_bytes` refuses lengths that do not add
up. Bit-level cases (NaN payloads, the sign of zero, subnormals, float32's edge) are drawn on
purpose, since the C code decides float32 exactness itself."""

from __future__ import annotations

import copy
import gc
import math
import struct
import sys
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import token_columns
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob, TopLogprob

from common import packed
from tests.test_wire_packed import vllm_choices
from trainer.trajectories import _SLOTS, _TOKEN_FIELDS, _build


def _python_packer(choice: dict[str, Any]) -> dict[str, Any]:
    """pack_choice with the C fast path declining every choice."""
    declining = SimpleNamespace(pack_entries=lambda content, token_ids: None)
    with mock.patch.object(packed, "token_columns", declining):
        return packed.pack_choice(copy.deepcopy(choice))


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


# float32's largest, just past it (rounds to it or to inf), its smallest subnormal, half of it
EDGES = [0.0, -0.0, 3.4028234663852886e38, 3.4028235677973366e38, 1e39, -1e300,
         1.401298464324817e-45, 7e-46, 5e-324, math.inf, -math.inf]  # fmt: skip
edge_floats = st.one_of(
    st.floats(width=32).map(float),
    st.floats(),
    st.sampled_from(EDGES),
    st.integers(0, 2**64 - 1).map(lambda bits: struct.unpack("<d", struct.pack("<Q", bits))[0]),
)


@st.composite
def common_shape_choices(draw: st.DrawFn) -> dict[str, Any]:
    """What vLLM sends for ART (the shape the C path takes), with edge values drawn."""
    count = draw(st.integers(1, 40))
    long_bytes = draw(st.booleans())  # a token of >= 256 bytes: uint32 lengths
    content = [
        {
            "token": f"token_id:{draw(st.integers(0, 2**31 - 1))}",
            "logprob": draw(edge_floats),
            "bytes": draw(st.lists(st.integers(0, 255), max_size=300 if long_bytes else 4)),
            "top_logprobs": [],
        }
        for _ in range(count)
    ]
    text = bytes(b for entry in content for b in entry["bytes"]).decode("utf-8", "replace")
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": draw(st.sampled_from([text, None, "x"]))},
        "logprobs": {"content": content},
        "finish_reason": "stop",
    }
    ids = [int(e["token"][9:]) for e in content]
    hint = draw(st.sampled_from(["same", "absent", "bool", "huge", "short", "tuple"]))
    if hint != "absent":
        choice["token_ids"] = {
            "same": ids,
            "bool": [True] + ids[1:],  # == [1, ...] but not ints: sent as it is
            "huge": ids[:-1] + [ids[-1] + 2**64],
            "short": ids[:-1],
            "tuple": tuple(ids),
        }[hint]
    if draw(st.booleans()):  # keys in another order than vLLM's: looked up, not read off
        content[:] = [dict(reversed(entry.items())) for entry in content]
    return choice


def _same_packing(choice: dict[str, Any]) -> dict[str, Any]:
    fast = packed.pack_choice(copy.deepcopy(choice))
    slow = _python_packer(choice)
    assert list(fast) == list(slow)  # the same fields in the same order: the same msgpack
    for key in fast:
        if key == "head":
            assert repr(fast[key]) == repr(slow[key])  # NaN-safe
        else:
            assert fast[key] == slow[key], key
    assert packed.unpack_choice(fast).keys() == choice.keys()
    return fast


@settings(max_examples=300, deadline=None)
@given(common_shape_choices())
def test_the_c_packer_gives_what_the_python_packer_gives(choice: dict[str, Any]) -> None:
    fast = _same_packing(choice)
    assert "ids" in fast  # this shape is packed, not sent raw
    rebuilt = packed.unpack_choice(fast)["logprobs"]["content"]
    for got, sent in zip(rebuilt, choice["logprobs"]["content"], strict=True):
        assert _bits(got["logprob"]) == _bits(sent["logprob"])
        assert got["bytes"] == sent["bytes"]


@settings(max_examples=200, deadline=None)
@given(vllm_choices())
def test_the_c_packer_declines_what_it_does_not_take(choice: dict[str, Any]) -> None:
    _same_packing(choice)  # odd tokens, null bytes, top_logprobs, extra keys: as Python packs


@pytest.mark.parametrize(
    "entry",
    [
        {"token": "token_id:7", "logprob": -1.0, "bytes": [True], "top_logprobs": []},
        {"token": "token_id:7", "logprob": -1, "bytes": [1], "top_logprobs": []},
        {"token": "token_id:07", "logprob": -1.0, "bytes": [1], "top_logprobs": []},
        {"token": "token_id:2147483648", "logprob": -1.0, "bytes": [1], "top_logprobs": []},
        {"token": "token_id:7", "logprob": -1.0, "bytes": [256], "top_logprobs": []},
        {"token": "token_id:7", "logprob": -1.0, "bytes": [2**70], "top_logprobs": []},
        {"token": "token_id:7", "logprob": -1.0, "bytes": None, "top_logprobs": []},
        {"token": "token_id:7", "logprob": -1.0, "bytes": [1], "top_logprobs": [{}]},
        {"token": "token_id:7", "logprob": -1.0, "bytes": [1], "extra": []},
        {"token": "token_id:٧", "logprob": -1.0, "bytes": [1], "top_logprobs": []},
    ],
)
def test_an_entry_off_the_common_shape_goes_to_the_python_packer(entry: dict[str, Any]) -> None:
    good = {"token": "token_id:1", "logprob": -0.5, "bytes": [104], "top_logprobs": []}
    assert token_columns.pack_entries([good], None) is not None
    assert token_columns.pack_entries([good, entry], None) is None
    _same_packing({"index": 0, "logprobs": {"content": [good, entry]}, "finish_reason": "stop"})


def test_a_key_that_is_not_exactly_a_string_declines_instead_of_running_its_code() -> None:
    class Hostile(str):
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no")

        __hash__ = str.__hash__

    entry = {Hostile("token"): "token_id:1", "logprob": -0.5, "bytes": [104], "top_logprobs": []}
    assert token_columns.pack_entries([entry], None) is None


def test_built_models_equal_what_pydantic_constructs() -> None:
    tokens, logprobs, lists = ["token_id:1", "token_id:2"], [-0.5, -0.0], [[104], []]
    built = _build(
        ChatCompletionTokenLogprob,
        _TOKEN_FIELDS,
        {"token": tokens, "bytes": lists, "logprob": logprobs, "top_logprobs": None},
    )
    expected = [
        ChatCompletionTokenLogprob.model_validate(
            {"token": t, "bytes": b, "logprob": lp, "top_logprobs": []}
        )
        for t, b, lp in zip(tokens, lists, logprobs, strict=True)
    ]
    assert built == expected
    assert [m.model_dump_json() for m in built] == [m.model_dump_json() for m in expected]
    assert [m.model_fields_set for m in built] == [m.model_fields_set for m in expected]
    # each object owns its empty top_logprobs and its extra fields, as validation gives
    assert built[0].top_logprobs is not built[1].top_logprobs
    assert built[0].model_extra is not built[1].model_extra
    built[0].model_extra["x"] = 1
    assert built[1].model_extra == {}
    built[0].token = "token_id:9"  # the field values too: a __dict__ per object
    assert [m.token for m in built] == ["token_id:9", "token_id:2"]


def test_building_leaves_no_reference_behind() -> None:
    token = "token_id:" + "1" * 5  # a fresh string, counted exactly
    before = sys.getrefcount(token)
    built = token_columns.build_models(
        TopLogprob, ("token", "bytes", "logprob"), ([token] * 1000, [None] * 1000, [0.0] * 1000),
        set(TopLogprob.model_fields), _SLOTS,
    )  # fmt: skip
    assert sys.getrefcount(token) == before + 1000
    del built
    gc.collect()
    assert sys.getrefcount(token) == before


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="one length"):
        token_columns.build_models(
            TopLogprob, ("token", "logprob"), (["a"], [0.0, 1.0]), set(), _SLOTS
        )
    with pytest.raises(TypeError, match="3 pydantic slots"):
        token_columns.build_models(TopLogprob, ("token",), (["a"],), set(), _SLOTS[:2])


def test_split_bytes_cuts_the_blob_or_refuses() -> None:
    assert token_columns.split_bytes(b"abc", b"\x01\x00\x02", 1) == [[97], [], [98, 99]]
    wide = struct.pack("<2I", 300, 0)
    assert token_columns.split_bytes(bytes(300), wide, 4) == [[0] * 300, []]
    for blob, lengths in ((b"abc", b"\x01\x01"), (b"a", b"\x01\x01"), (b"", b"\xff")):
        with pytest.raises(ValueError, match="blob"):
            token_columns.split_bytes(blob, lengths, 1)
    with pytest.raises(ValueError, match="width"):
        token_columns.split_bytes(b"", b"\x00\x00", 2)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=50))
def test_token_strings_spell_packed_ids(ids: list[int]) -> None:
    wide = struct.pack(f"<{len(ids)}i", *ids)
    assert token_columns.token_strings(wide, len(ids)) == [f"token_id:{i}" for i in ids]
    if all(0 <= i < 2**24 for i in ids):  # uint24, as vocabularies travel
        narrow = b"".join(struct.pack("<I", i)[:3] for i in ids)
        assert token_columns.token_strings(narrow, len(ids)) == [f"token_id:{i}" for i in ids]


def test_token_strings_refuse_ids_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="5 bytes of ids for 2 tokens"):
        token_columns.token_strings(b"\0" * 5, 2)
