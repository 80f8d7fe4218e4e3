"""The worker parses the policy's responses with msgspec: what it gets is what `json.loads` gives,
in every case (values, types, key order, the sign of zero, NaN), or the same error; then checks
every token's logprob entry."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import EndpointError
from common.wire import PolicyRef
from rollout_workers.policy import PolicyClient, check_choice, parse_json
from tests.fakes.scripted_llm import completion
from tests.jobs import rollout_limits

# Lone surrogates too (category Cs): json escapes them, and json.loads gives them back.
any_text = st.text(st.characters(exclude_categories=()), max_size=8)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats()
    | st.floats(width=32).map(float)
    | any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=24,
)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and str(a) == str(b))
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


def _outcome(parse: Any, body: bytes) -> tuple[str, Any]:
    try:
        return "value", parse(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        return "error", ValueError if isinstance(exc, ValueError) else RecursionError


def _check(body: bytes) -> None:
    ours, theirs = _outcome(parse_json, body), _outcome(json.loads, body)
    assert ours[0] == theirs[0] and _same(ours[1], theirs[1]), (body[:200], ours, theirs)


@settings(max_examples=400, deadline=None)
@given(json_values, st.booleans(), st.sampled_from([None, 2]))
def test_parse_json_gives_what_json_loads_gives(value: Any, ascii_only: bool, indent: Any) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    _check(text.encode("utf-8", "surrogatepass"))  # unescaped surrogates: invalid UTF-8


@pytest.mark.parametrize(
    "body",
    [
        b'{"logprob": NaN}', b"[-Infinity, Infinity]", b"1e400", b"-1e400", b"2.5e-324",
        b"123456789012345678901234567890", b'"\\ud800"', b'{"a": 1, "a": 2}', b"-0.0",
        b"\xef\xbb\xbf[1]", '{"a": "é"}'.encode("utf-16"), b'{"a": 1} x', b"", b"  [1]  ",
        b'{"a": "\xff"}', b'{"\xed\xa0\x80": null}', b"[" * 100_000 + b"]" * 100_000,
    ],
)  # fmt: skip
def test_what_only_pythons_json_takes_or_refuses_is_decided_by_it(body: bytes) -> None:
    _check(body)


def test_a_response_nested_too_deep_is_a_malformed_completion_not_a_crash() -> None:
    # Retried like any bad response (EndpointError); a RecursionError would end the rollout.
    client = PolicyClient(
        PolicyRef(inference_name="m@0", policy_step=0, endpoint="http://x"), rollout_limits()
    )
    deep = httpx.Response(200, content=b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(EndpointError, match="malformed completion"):
        client._parse(deep, 0)


@pytest.mark.parametrize(
    "entry",
    [{"logprob": -0.1}, {"token": "a"}, {"token": 5, "logprob": -0.1},
     {"token": "a", "logprob": "-0.1"}, ["token", "a"]],
    ids=["no token", "no logprob", "token not text", "logprob not a number", "not a map"],
)  # fmt: skip
def test_a_malformed_logprob_entry_is_refused_and_a_plain_one_passes(entry: Any) -> None:
    choice = completion("m@0", "a b c", 1)["choices"][0]
    check_choice(choice)
    choice["logprobs"]["content"].insert(1, entry)
    with pytest.raises(EndpointError, match="malformed logprob entry"):
        check_choice(choice)
