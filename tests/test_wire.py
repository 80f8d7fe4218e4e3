"""The wire codec: exact round trips of ART trajectories, strict rejection of anything else."""

from __future__ import annotations

from pathlib import Path

import art
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat.chat_completion import Choice

from common.errors import WireError
from common.wire import (
    SCHEMA_VERSION,
    GradingSpec,
    PolicyRef,
    RolloutJob,
    RolloutLimits,
    RolloutResult,
    Scenario,
    decode,
    encode,
)
from tests.fakes.scripted_llm import completion
from trainer.trajectories import from_art_trajectory, is_trainable, to_art_trajectory

FIXTURES = Path(__file__).parent / "fixtures"
text = st.text(max_size=40)
numbers = st.floats(allow_nan=False, allow_infinity=False, width=64)
int64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def choices(draw: st.DrawFn) -> Choice:
    raw = completion("m@1", draw(text), draw(st.integers(0, 10_000)))["choices"][0]
    if draw(st.booleans()):
        raw["message"]["tool_calls"] = [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": draw(text), "arguments": "{}"},
            }
        ]
    raw["vllm_extra"] = draw(st.dictionaries(st.sampled_from("abc"), int64))
    return Choice.model_validate(raw)


messages = st.builds(
    lambda role, content: {"role": role, "content": content},
    st.sampled_from(["system", "user", "tool"]),
    text,
)
items = st.lists(st.one_of(messages, choices()), min_size=1, max_size=6)


@st.composite
def trajectories(draw: st.DrawFn) -> art.Trajectory:
    return art.Trajectory(
        messages_and_choices=draw(items),
        additional_histories=[
            art.trajectories.History(messages_and_choices=h)
            for h in draw(st.lists(items, max_size=2))
        ],
        reward=draw(numbers),
        initial_policy_version=draw(st.none() | st.integers(0, 100)),
        metrics=draw(
            st.dictionaries(
                st.text(min_size=1, max_size=8), numbers | st.booleans() | int64, max_size=3
            )
        ),
        metadata=draw(
            st.dictionaries(st.text(min_size=1, max_size=8), text | int64 | st.none(), max_size=3)
        ),
        logs=draw(st.lists(text, max_size=2)),
    )


def _result(trajectory: art.Trajectory | None) -> RolloutResult:
    return RolloutResult(
        run_id="run",
        job_id="job",
        rollout_id="job-r000",
        step=3,
        group_index=1,
        rollout_index=0,
        instance_id="repo__abc",
        policy_step=3,
        status="ok" if trajectory else "failed",
        trajectory=from_art_trajectory(trajectory) if trajectory else None,
        enqueued_at=1.0,
        started_at=2.0,
        finished_at=3.5,
    )


@settings(max_examples=60, deadline=None)
@given(trajectories())
def test_trajectories_round_trip_exactly(original: art.Trajectory) -> None:
    decoded = decode(encode(_result(original)), RolloutResult)
    rebuilt = to_art_trajectory(decoded.trajectory)
    assert rebuilt.model_dump() == original.model_dump()
    for before, after in zip(
        original.messages_and_choices, rebuilt.messages_and_choices, strict=True
    ):
        assert type(before) is type(after)
        if isinstance(after, Choice):
            assert after.logprobs.content[0].token.startswith("token_id:")
            assert after.model_extra == before.model_extra  # vLLM's extra fields survive
    for before, after in zip(
        original.additional_histories, rebuilt.additional_histories, strict=True
    ):
        assert [type(m) for m in after.messages_and_choices] == [
            type(m) for m in before.messages_and_choices
        ]


def test_groups_rebuilt_through_the_constructor_stay_trainable() -> None:
    choice = Choice.model_validate(completion("m@0", "hello there", 5)["choices"][0])
    trajectory = art.Trajectory(
        messages_and_choices=[{"role": "user", "content": "hi"}, choice], reward=1.0
    )
    wire = decode(encode(_result(trajectory)), RolloutResult).trajectory
    group = art.TrajectoryGroup([to_art_trajectory(wire), to_art_trajectory(wire)])
    assert len(group.trajectories) == 2
    assert all(is_trainable(t) for t in group.trajectories)
    untrainable = art.Trajectory.model_validate(trajectory.model_dump(mode="json"))
    assert not is_trainable(untrainable)  # why the codec exists


def _job() -> RolloutJob:
    return RolloutJob(
        run_id="rlm-training-r2e-rlm-qwen3-14b",
        job_id="rlm-training-r2e-rlm-qwen3-14b-s000001-g0002",
        step=1,
        group_index=2,
        rollouts_per_group=4,
        scenario=Scenario(
            instance_id="pandas__0123456789ab", problem_statement="Fix it.", repo_name="pandas"
        ),
        grading=GradingSpec(
            docker_image="namanjain12/pandas_final:0123",
            expected={"test_a": "PASSED", "TestB.test_c[1]": "FAILED"},
            fail_to_pass=["test_a"],
        ),
        grader_url="http://docker-node:8000",
        cache_dir="/data/repo-cache",
        policy=PolicyRef(
            inference_name="r2e-rlm-qwen3-14b@1", policy_step=1, endpoint="http://localhost:8000/v1"
        ),
        limits=RolloutLimits(
            max_steps=15,
            max_context_tokens=28000,
            max_completion_tokens=4000,
            code_timeout_s=90.0,
            max_output_chars=3000,
            request_timeout_s=600.0,
            rollout_retries=2,
            retry_backoff_s=2.0,
        ),
        system_prompt_fn="common.prompts:r2e_system_prompt",
        reward_fn="common.rewards:finished_reward",
        results_stream="rlm:rlm-training-r2e-rlm-qwen3-14b:results",
        lease_ttl_s=10,
        enqueued_at=1700000000.0,
    )


def _trajectory_result() -> RolloutResult:
    tokens = [
        {
            "token": f"token_id:{i * 977}",
            "logprob": -0.25 * i,
            "bytes": [65 + i],
            "top_logprobs": [],
        }
        for i in range(4)
    ]  # fixed here, not by the scripted LLM: the fixture must not follow its changes
    raw = {
        "index": 0,
        "message": {"role": "assistant", "content": "ABCD", "tool_calls": None},
        "logprobs": {"content": tokens},
        "finish_reason": "stop",
        "stop_reason": None,
        "token_ids": [i * 977 for i in range(4)],
    }
    trajectory = art.Trajectory(
        messages_and_choices=[{"role": "user", "content": "hi"}, Choice.model_validate(raw)],
        reward=1.0,
        metrics={"steps": 1},
    )
    return _result(trajectory)


GOLDEN = [("rollout_job", _job()), ("rollout_result", _result(None))]


@pytest.mark.parametrize(("name", "message"), [*GOLDEN, ("rollout_result_trajectory", None)])
def test_golden_bytes(name: str, message: RolloutJob | RolloutResult | None) -> None:
    """The bytes on the wire change only on purpose (then bump SCHEMA_VERSION and add a fixture)."""
    message = message or _trajectory_result()
    golden = (FIXTURES / f"{name}.v{SCHEMA_VERSION}.msgpack").read_bytes()
    assert encode(message) == golden
    decoded = decode(golden, type(message))
    if isinstance(message, RolloutResult) and message.trajectory is not None:
        got, want = to_art_trajectory(decoded.trajectory), to_art_trajectory(message.trajectory)
        assert got.model_dump() == want.model_dump()
        assert decoded.model_copy(update={"trajectory": None}) == message.model_copy(
            update={"trajectory": None}
        )
    else:
        assert decoded == message


@pytest.mark.parametrize("version", [1, 2, 3, 4])
@pytest.mark.parametrize(("name", "message"), GOLDEN)
def test_older_versions_still_decode(
    version: int, name: str, message: RolloutJob | RolloutResult
) -> None:
    golden = (FIXTURES / f"{name}.v{version}.msgpack").read_bytes()
    assert msgpack.unpackb(golden)["v"] == version
    assert decode(golden, type(message)) == message


@pytest.mark.parametrize("fixture", ["rollout_result_trajectory.v3", "rollout_result_arrays.v4"])
def test_packed_trajectory_fixtures_decode(fixture: str) -> None:
    """v3's packed choices, and v4's compressed body with its arrays beside it (written with
    COMPRESS_OVER at 0: zlib's bytes may differ between zlib builds, so only decoding is
    pinned)."""
    message = _trajectory_result()
    decoded = decode((FIXTURES / f"{fixture}.msgpack").read_bytes(), RolloutResult)
    got, want = to_art_trajectory(decoded.trajectory), to_art_trajectory(message.trajectory)
    assert got.model_dump() == want.model_dump()
    assert decoded.model_copy(update={"trajectory": None}) == message.model_copy(
        update={"trajectory": None}
    )


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"\xc1", "not a msgpack envelope"),
        (msgpack.packb([1, 2]), "exactly v, type and body"),
        (msgpack.packb({"v": 99, "type": "rollout_result", "body": {}}), "schema version 99"),
        (
            msgpack.packb({"v": SCHEMA_VERSION, "type": "rollout_job", "body": {}}),
            "expected a rollout_result",
        ),
        (
            msgpack.packb({"v": SCHEMA_VERSION, "type": "rollout_result", "body": {"step": "x"}}),
            "broken rollout_result",
        ),
    ],
)
def test_unknown_or_broken_messages_are_rejected(payload: bytes, error: str) -> None:
    with pytest.raises(WireError, match=error):
        decode(payload, RolloutResult)


def test_unencodable_values_raise_a_wire_error() -> None:
    trajectory = art.Trajectory(
        messages_and_choices=[{"role": "user", "content": "x"}], reward=0.0, metrics={"n": 2**70}
    )
    with pytest.raises(WireError, match="cannot encode rollout_result"):
        encode(_result(trajectory))


def test_unknown_fields_are_rejected() -> None:
    body = _result(None).model_dump() | {"surprise": 1}
    with pytest.raises(WireError, match="surprise"):
        envelope = {"v": SCHEMA_VERSION, "type": "rollout_result", "body": body}
        decode(msgpack.packb(envelope), RolloutResult)
