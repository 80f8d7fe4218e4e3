"""Long policy replies posted as they arrive (`rollout_workers.replies`), built by the trainer's
collector before their result, and claimed by it; every path that loses the built copy fetches
the reply from the stream again, and a reply that is gone rejects its result (to be rerun)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest
from redis import Redis

from common import keys
from common.wire import ChoicePart, RolloutResult, WireItem, WireTrajectory, decode, encode
from rollout_workers.job import post_result
from rollout_workers.outcome import RolloutOutcome
from rollout_workers.policy import PolicyClient
from rollout_workers.replies import ReplyPoster
from rollout_workers.rollout import run_rollout
from tests.fakes.scripted_llm import ScriptedLLM, completion
from tests.jobs import rollout_job
from trainer.collector import Polled, ResultCollector
from trainer.trajectories import to_art_trajectory

WORDS = "the fix is in the parser and it goes like this " * 10


def _job(min_tokens: int = 0) -> Any:
    return rollout_job(
        "x", run_id="r", group=1, rollouts_per_group=2, post_replies_over_tokens=min_tokens
    )


def _reply(seed: int) -> dict[str, Any]:
    return completion("m@0", f"{seed} {WORDS}", 3)["choices"][0]


def _result(job: Any, index: int, items: list[WireItem]) -> RolloutResult:
    return RolloutResult(
        run_id=job.run_id, job_id=job.job_id, rollout_id=keys.rollout_id(job.job_id, index),
        step=job.step, group_index=job.group_index, rollout_index=index, instance_id="i",
        policy_step=0, status="ok",
        trajectory=WireTrajectory(messages_and_choices=items, reward=1.0),
        enqueued_at=0.0, started_at=0.0, finished_at=0.0,
    )  # fmt: skip


def _rollout(redis: Redis, job: Any, index: int, replies: int = 3) -> tuple[RolloutResult, Any]:
    """A rollout whose replies go through the poster as the worker's do, then its result; and
    the ART trajectory it is, as it would be with every reply inline."""
    poster = ReplyPoster(redis, job, index)
    first = WireItem(kind="message", data={"role": "user", "content": "fix it"})
    items, inline = [first], [first]
    for turn in range(replies):
        reply, ok = _reply(10 * index + turn), {"role": "user", "content": "ok"}
        items += [poster.item(reply), WireItem(kind="message", data=ok)]
        inline += [WireItem(kind="choice", data=reply), WireItem(kind="message", data=ok)]
    result = _result(job, index, items)
    post_result(redis, job, result)
    return result, to_art_trajectory(WireTrajectory(messages_and_choices=inline, reward=1.0))


def _poll_until(collector: ResultCollector, results: int, rejected: int = 0) -> Polled:
    total = Polled()
    for _ in range(200):
        polled = collector.poll(block_ms=100)
        total.received += polled.received
        total.rejected += polled.rejected
        total.parts += polled.parts
        if len(total.received) >= results and len(total.rejected) >= rejected:
            return total
    raise AssertionError(f"only {len(total.received)} results, {len(total.rejected)} rejected")


def test_replies_travel_ahead_and_the_result_refers_to_them(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    job = _job()
    sent, want = _rollout(redis, job, 0)
    stream = keys.results_stream("r")
    entries = redis.xrange(stream)
    assert [sorted(fields) for _, fields in entries] == [[b"part"]] * 3 + [[b"data"]]
    part = decode(entries[0][1][b"part"], ChoicePart)
    assert part.rollout_id == sent.rollout_id and part.item.kind == "packed"
    assert sent.trajectory is not None  # the worker keeps only references to posted replies
    kinds = [i.kind for i in sent.trajectory.messages_and_choices]
    assert kinds == ["message", "part", "message", "part", "message", "part", "message"]
    body = msgpack.unpackb(entries[-1][1][b"data"])
    assert len(entries[-1][1][b"data"]) < min(len(f[b"part"]) for _, f in entries[:3])
    refs = [i["data"] for i in body["body"]["trajectory"]["messages_and_choices"][1::2]]
    assert refs == [{"id": e.decode()} for e, _ in entries[:3]]

    collector = ResultCollector(redis, "r")
    try:
        polled = _poll_until(collector, 1)
        assert [p.entry_id for p in polled.parts] == [e.decode() for e, _ in entries[:3]]
        assert {(p.step, p.group_index) for p in polled.parts} == {(job.step, job.group_index)}
        (received,) = polled.received
        assert received.trajectory is not None
        assert received.trajectory.model_dump() == want.model_dump()
        assert len(collector.parts) == 0  # claimed
        collector.ack([received.entry_id] + [p.entry_id for p in polled.parts])
        assert redis.xlen(stream) == 0
    finally:
        collector.close()


def test_short_replies_and_a_failed_post_travel_inline(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    short = ReplyPoster(redis, _job(min_tokens=100_000), 0).item(_reply(1))
    never = ReplyPoster(redis, _job(min_tokens=-1), 0).item(_reply(1))
    assert short.kind == never.kind == "choice" and redis.xlen(keys.results_stream("r")) == 0
    down = Redis(port=1, socket_connect_timeout=0.5)  # nothing listens there
    failed = ReplyPoster(down, _job(), 0).item(_reply(1))
    assert failed == WireItem(kind="choice", data=_reply(1))


@pytest.mark.parametrize("lost", ["restart", "evicted"])
def test_a_reply_not_kept_is_fetched_again(redis_url: str, lost: str) -> None:
    redis = Redis.from_url(redis_url)
    job = _job()
    collector = ResultCollector(redis, "r")
    try:
        if lost == "evicted":
            collector.parts.max_tokens = 0  # keeps only the newest
        sent = [_rollout(redis, job, 0), _rollout(redis, job, 1)]
        polled = _poll_until(collector, 2)
        if lost == "restart":  # read, never acknowledged: a new trainer reads all of it again
            collector.close()
            collector = ResultCollector(redis, "r")
            polled = _poll_until(collector, 2)
        assert len(polled.parts) == 6
        for received, result in zip(polled.received, sent, strict=True):
            assert received.trajectory is not None
            assert received.trajectory.model_dump() == result[1].model_dump()
    finally:
        collector.close()


@pytest.mark.parametrize("damage", ["deleted", "other rollout", "not an id"])
def test_a_result_whose_reply_is_gone_is_rejected(redis_url: str, damage: str) -> None:
    redis = Redis.from_url(redis_url)
    job = _job()
    poster = ReplyPoster(redis, job, 0)
    item = poster.item(_reply(1))
    if damage == "deleted":
        redis.xdel(keys.results_stream("r"), item.data["id"])
    elif damage == "other rollout":
        item = ReplyPoster(redis, job, 1).item(_reply(1))
    else:
        item = WireItem(kind="part", data={"id": "no-such-id"})
    post_result(redis, job, _result(job, 0, [item]))
    collector = ResultCollector(redis, "r")
    try:
        (rejected,) = _poll_until(collector, 0, rejected=1).rejected
        assert rejected.rollout_index == 0 and "reply" in rejected.reason
        assert collector.dead_letters == 1
    finally:
        collector.close()


def test_a_damaged_reply_is_quarantined(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    stream = keys.results_stream("r")
    redis.xadd(stream, {"part": b"not msgpack"})
    message = encode(_result(_job(), 0, [WireItem(kind="message", data={"role": "user"})]))
    redis.xadd(stream, {"part": message})  # a result where a reply belongs
    collector = ResultCollector(redis, "r")
    try:
        for _ in range(100):
            collector.poll(block_ms=50)
            if collector.dead_letters == 2:
                break
        assert collector.dead_letters == 2 and redis.xlen(stream) == 0
    finally:
        collector.close()


def test_trimmed_segments_whose_replies_were_posted_stay_additional_histories(
    redis_url: str,
) -> None:
    # A segment's replies may all be references now: it still trains, so it is still sent.
    redis = Redis.from_url(redis_url)

    def script(messages: list[dict[str, Any]], rng: object) -> str:
        return "```python\nprint('again')\n```"

    async def run() -> RolloutOutcome:
        with ScriptedLLM(script=script, overflow_when=lambda m: len(m) >= 6) as llm:
            job = rollout_job(llm.url, run_id="r", post_replies_over_tokens=0)
            client = PolicyClient(job.policy, job.limits)
            outcome = RolloutOutcome(reply_item=ReplyPoster(redis, job, 0).item)
            try:
                return await run_rollout(job, client, "system", outcome=outcome)
            finally:
                await client.aclose()

    outcome = asyncio.run(run())
    assert outcome.context_trims >= 1
    assert len(outcome.histories) == outcome.context_trims
    segments = [outcome.items, *(h.messages_and_choices for h in outcome.histories)]
    assert all("part" in [i.kind for i in items] for items in segments)
    assert "choice" not in [i.kind for items in segments for i in items]
