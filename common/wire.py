"""The wire format between trainer and workers: typed messages in versioned msgpack envelopes.

Two messages cross the queue: a `RolloutJob` (trainer -> worker, one scenario group) and a
`RolloutResult` (worker -> trainer, one rollout). Decoding is strict: an unknown version, an
unknown type or a payload that does not validate raises `WireError`.

Trajectories travel as `WireTrajectory`: each item of `messages_and_choices` is tagged `message`
(a chat message dict) or `choice` (the raw `choices[0]` JSON of a chat completion, untouched), so
the trainer can rebuild the exact `Choice` objects ART trains on. From version 3 a choice crosses
the wire packed (`common.packed`: per-token data as typed arrays, not one map per token) and
decodes as kind `packed`, unpacked only when the trainer builds ART's objects from it
(`WireItem.choice()` gives the raw dict back). From version 4 a large body is compressed
without its token ids and logprobs: those arrays (7 of ~9 bytes a token) barely compress (a
large vocabulary's ids, float32 logprobs), and zlib spent three quarters of its time on them;
they travel beside it, referenced from the body by msgpack extension values (when a sample of
them does compress, they stay inside). From version 5 a long policy reply may be posted on its
own as soon as it arrives (a `ChoicePart`, so the trainer builds it while the rollout goes on);
the trajectory then refers to it by its stream entry id (kind `part`). Versions 1 to 4 still
decode.
"""

from __future__ import annotations

import struct
import zlib
from functools import partial
from typing import Any, Literal, TypeVar

import msgpack
from pydantic import BaseModel, ConfigDict, ValidationError

from common import keys
from common.errors import WireError
from common.garbage import no_gc
from common.packed import pack_choice, unpack_choice

# 2: RolloutJob.attempt and rollout_indexes (reruns of single rollouts)
# 3: choices packed (per-token arrays, common.packed); a large body may be zlib-compressed
# 4: a compressed body's token ids and logprobs travel beside it, uncompressed ("arrays")
# 5: ChoicePart, and trajectory items of kind "part" that refer to one
SCHEMA_VERSION = 5
DECODABLE_VERSIONS = (1, 2, 3, 4, 5)
COMPRESS_OVER = 8 * 1024  # bodies larger than this travel zlib-compressed when it pays
SAMPLE_BYTES = 256  # of each array, to judge whether the arrays compress
ARRAY_EXT = 1  # msgpack extension type: a reference to the envelope's arrays (uint32 index)
_INDEX = struct.Struct("<I")
_ARRAY_KEYS = ("ids", "lp")  # packed fields that do not compress
_BODY = frozenset({"v", "type", "body"})
_ZBODY_V3 = frozenset({"v", "type", "zbody"})
_ZBODY = frozenset({"v", "type", "zbody", "arrays"})


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scenario(_Wire):
    """One task as the agent sees it: nothing that reveals the tests or the answer."""

    instance_id: str
    problem_statement: str
    repo_name: str = ""


class GradingSpec(_Wire):
    """How to grade a scenario's rollouts. Goes to the grader and the reward function, never
    into the agent's prompt or working copy: it names the hidden tests."""

    docker_image: str
    expected: dict[str, str]  # test key -> PASSED / FAILED / ERROR at the fix commit
    fail_to_pass: list[str] = []
    pass_to_pass: list[str] = []


class PolicyRef(_Wire):
    """Which policy to sample from: the exact inference name (`name@step`) and where."""

    inference_name: str
    policy_step: int
    endpoint: str
    api_key: str = ""


class RolloutLimits(_Wire):
    max_steps: int
    max_context_tokens: int
    max_completion_tokens: int
    code_timeout_s: float
    max_output_chars: int
    request_timeout_s: float
    rollout_retries: int
    retry_backoff_s: float
    max_sub_queries: int = 10
    rollout_time_limit_s: float | None = None  # wall time of a rollout; past it: truncated
    post_replies_over_tokens: int = -1  # replies this long are posted as they arrive; -1: never


class RolloutJob(_Wire):
    """One RQ job: run `rollouts_per_group` rollouts of one scenario and post each result."""

    run_id: str
    job_id: str
    step: int
    group_index: int
    rollouts_per_group: int
    scenario: Scenario
    grading: GradingSpec | None  # None with --grader none
    grader_url: str = ""
    grading_timeout_s: float = 300.0
    cache_dir: str = ""  # where workers find the scenario's repository (repo cache)
    policy: PolicyRef
    limits: RolloutLimits
    system_prompt_fn: str  # import path
    reward_fn: str  # import path
    results_stream: str
    lease_ttl_s: int
    log_sample_rate: float = 0.0  # fraction of rollouts that send back a visualizer log
    enqueued_at: float
    attempt: int = 0  # 0: the group's first job; n: the n-th rerun of rollouts that never arrived
    rollout_indexes: list[int] | None = None  # None: every rollout of the group
    grade_unfinished: bool = False  # grade rollouts without finish() or a diff (else reward 0)

    @property
    def rq_job_id(self) -> str:
        """The RQ job id of this attempt (its lease and posted set are keyed by it)."""
        return keys.attempt_job_id(self.job_id, self.attempt)

    @property
    def indexes(self) -> list[int]:
        if self.rollout_indexes is None:
            return list(range(self.rollouts_per_group))
        return list(self.rollout_indexes)


class WireItem(_Wire):
    # packed: a choice as v3 and later decode it; part: {"id": entry id} of a posted ChoicePart
    kind: Literal["message", "choice", "packed", "part"]
    data: dict[str, Any]

    @property
    def is_reply(self) -> bool:
        """A policy reply: inline (choice, packed) or posted ahead (part)."""
        return self.kind != "message"

    def choice(self) -> dict[str, Any]:
        """The raw `choices[0]` dict of a choice item, packed or not."""
        return unpack_choice(self.data) if self.kind == "packed" else self.data


class WireHistory(_Wire):
    messages_and_choices: list[WireItem]
    tools: list[dict[str, Any]] | None = None


class WireTrajectory(_Wire):
    messages_and_choices: list[WireItem]
    tools: list[dict[str, Any]] | None = None
    additional_histories: list[WireHistory] = []
    reward: float
    initial_policy_version: int | None = None
    final_policy_version: int | None = None
    metrics: dict[str, float | int | bool] = {}
    metadata: dict[str, float | int | str | bool | None] = {}
    logs: list[str] = []


class ErrorInfo(_Wire):
    """A failure kept as data: which boundary, what it said, where."""

    type: str
    message: str
    traceback: str = ""


class RolloutResult(_Wire):
    """One finished rollout: a trajectory, or the infrastructure error that ended it."""

    run_id: str
    job_id: str
    rollout_id: str
    step: int
    group_index: int
    rollout_index: int
    instance_id: str
    policy_step: int
    status: Literal["ok", "failed"]
    trajectory: WireTrajectory | None = None
    error: ErrorInfo | None = None
    attempts: int = 1
    worker: str = ""
    rlm_log: list[dict[str, Any]] | None = None  # iteration lines for the RLM visualizer
    enqueued_at: float
    started_at: float
    finished_at: float


class ChoicePart(_Wire):
    """One policy reply of a rollout under way, posted as it arrived (worker -> trainer)."""

    run_id: str
    rollout_id: str
    step: int
    group_index: int
    rollout_index: int
    item: WireItem  # kind "choice" when sent, "packed" when decoded


_M = TypeVar("_M", bound=_Wire)
_TYPES: dict[str, type[_Wire]] = {
    "rollout_job": RolloutJob,
    "rollout_result": RolloutResult,
    "choice_part": ChoicePart,
}
_NAMES = {cls: name for name, cls in _TYPES.items()}


class _Arrays:
    """Packed per-token arrays taken out of a body (replaced there by references), with the
    places they came from so that a body that stays small can have them back inline."""

    def __init__(self) -> None:
        self.arrays: list[bytes] = []
        self._places: list[tuple[dict[str, Any], str]] = []

    def take(self, packed: dict[str, Any]) -> dict[str, Any]:
        for place in (packed, packed.get("top")):
            for key in _ARRAY_KEYS:
                if type(place) is dict and key in place:
                    self._places.append((place, key))
                    index = _INDEX.pack(len(self.arrays))
                    self.arrays.append(place[key])
                    place[key] = msgpack.ExtType(ARRAY_EXT, index)
        return packed

    def restore(self) -> None:
        for (place, key), array in zip(self._places, self.arrays, strict=True):
            place[key] = array
        self.arrays, self._places = [], []


def _item(item: WireItem, arrays: _Arrays) -> dict[str, Any]:
    if item.kind != "choice":
        return {"kind": item.kind, "data": item.data}
    return {"kind": "packed", "data": arrays.take(pack_choice(item.data))}


def _items(items: list[WireItem], arrays: _Arrays) -> list[dict[str, Any]]:
    return [_item(i, arrays) for i in items]


def _trajectory_body(trajectory: WireTrajectory, arrays: _Arrays) -> dict[str, Any]:
    """model_dump without copying every per-token dict, choices packed."""
    body = trajectory.model_dump(exclude={"messages_and_choices", "additional_histories"})
    body["messages_and_choices"] = _items(trajectory.messages_and_choices, arrays)
    body["additional_histories"] = [
        {"messages_and_choices": _items(h.messages_and_choices, arrays), "tools": h.tools}
        for h in trajectory.additional_histories
    ]
    return {name: body[name] for name in WireTrajectory.model_fields}


def _body(message: _Wire, arrays: _Arrays) -> dict[str, Any]:
    if isinstance(message, ChoicePart):
        body = message.model_dump(exclude={"item"})
        with no_gc():
            body["item"] = _item(message.item, arrays)
        return {name: body[name] for name in ChoicePart.model_fields}
    if not isinstance(message, RolloutResult) or message.trajectory is None:
        return message.model_dump()
    body = message.model_dump(exclude={"trajectory"})
    with no_gc():
        body["trajectory"] = _trajectory_body(message.trajectory, arrays)
    return {name: body[name] for name in RolloutResult.model_fields}


def encode(message: _Wire) -> bytes:
    """A message -> msgpack bytes of `{"v": version, "type": name, "body": fields}`. A body
    over COMPRESS_OVER bytes goes as `"zbody"`: its msgpack bytes zlib-compressed (level 1),
    its packed token ids and logprobs taken out beforehand and sent as `"arrays"` (unless a
    sample of them compresses well: then they stay in the body, and `"arrays"` is empty)."""
    name = _NAMES[type(message)]
    arrays = _Arrays()
    try:
        fields = _body(message, arrays)
        body = msgpack.packb(fields, use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:
        raise WireError(f"cannot encode {name}: {exc}") from exc
    head = msgpack.packb({"v": SCHEMA_VERSION, "type": name})[1:]  # the map's two entries
    if len(body) + sum(map(len, arrays.arrays)) > COMPRESS_OVER:
        if arrays.arrays and _compressible(arrays.arrays):
            arrays.restore()  # repetitive ids and logprobs: worth zlib's time, inside the body
            body = msgpack.packb(fields, use_bin_type=True)
        packed = zlib.compress(body, 1)
        if arrays.arrays or len(packed) < 0.9 * len(body):
            zbody = msgpack.packb("zbody") + msgpack.packb(packed)
            return b"\x84" + head + zbody + msgpack.packb("arrays") + msgpack.packb(arrays.arrays)
    if arrays.arrays:  # a small body: one plain map, as in version 3
        arrays.restore()
        body = msgpack.packb(fields, use_bin_type=True)
    return b"\x83" + head + msgpack.packb("body") + body


def _compressible(arrays: list[bytes]) -> bool:
    """Whether the start of each array, together, shrinks by a quarter under zlib (vLLM's
    float32 logprobs and a large vocabulary's ids do not; a scripted LLM's do)."""
    sample = b"".join(array[:SAMPLE_BYTES] for array in arrays[:64])
    return len(zlib.compress(sample, 1)) < 0.75 * len(sample)


def _array(arrays: list[bytes], code: int, data: bytes) -> bytes:
    """An array reference of a compressed body -> the array (nothing else is an extension)."""
    if code != ARRAY_EXT or len(data) != _INDEX.size:
        raise ValueError(f"msgpack extension {code} is not an array reference")
    (index,) = _INDEX.unpack(data)
    if index >= len(arrays):
        raise ValueError(f"array {index} of {len(arrays)}")
    return arrays[index]


def _inflated(envelope: dict[str, Any]) -> dict[str, Any]:
    arrays = envelope.get("arrays", [])
    if envelope["v"] not in ((4, 5) if "arrays" in envelope else (3,)):
        raise WireError("a compressed body is version 3, or version 4 or later with its arrays")
    if not isinstance(envelope["zbody"], bytes) or not (
        type(arrays) is list and all(type(a) is bytes for a in arrays)
    ):
        raise WireError("a compressed body and its arrays are byte strings")
    try:
        body = msgpack.unpackb(
            zlib.decompress(envelope["zbody"]),
            raw=False,
            strict_map_key=True,
            ext_hook=partial(_array, arrays),
        )
    except Exception as exc:  # zlib.error, _array's ValueError, or msgpack's several types
        raise WireError(f"compressed body that does not inflate: {exc}") from exc
    return {"v": envelope["v"], "type": envelope["type"], "body": body}


def decode(data: bytes, expected: type[_M]) -> _M:
    """msgpack bytes -> the expected message type, or WireError saying what is wrong."""
    try:
        envelope = msgpack.unpackb(
            data, raw=False, strict_map_key=True, ext_hook=partial(_array, [])
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"not a msgpack envelope: {exc}") from exc
    if isinstance(envelope, dict) and set(envelope) in (_ZBODY, _ZBODY_V3):
        envelope = _inflated(envelope)
    if not isinstance(envelope, dict) or set(envelope) != _BODY:
        raise WireError("envelope must be a map of exactly v, type and body")
    if envelope["v"] not in DECODABLE_VERSIONS or type(envelope["v"]) is not int:
        raise WireError(
            f"schema version {envelope['v']!r} is not one of {DECODABLE_VERSIONS}: "
            "run trainer and workers from the same release"
        )
    if _TYPES.get(envelope["type"]) is not expected:
        raise WireError(f"expected a {_NAMES[expected]}, got type {envelope['type']!r}")
    try:
        return expected.model_validate(envelope["body"])
    except ValidationError as exc:
        raise WireError(f"broken {_NAMES[expected]} payload: {exc}") from exc
