"""Ingest beside the caller: the reader reads on while a rollout is built, `take`/`poll` never
wait for a build, failures come back to the caller, nothing is left running after close().

Events, not timings: a build is held on an Event while the test watches the reader."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from redis import Redis

from common import keys
from common.wire import encode
from tests.test_groups import result
from trainer.collector import ResultCollector
from trainer.ingest import PAUSE, Limits, ReadAhead

WAIT_S = 20.0  # bound on every wait for an event (never reached when things work)


class Source:
    """Batches of (name, size) entries, fetched in order; records the counts asked for."""

    def __init__(self, *batches: list[tuple[str, int]]) -> None:
        self.batches = list(batches)
        self.asked: list[int] = []
        self.fetched = [threading.Event() for _ in batches]
        self.failure: BaseException | None = None

    def fetch(self, count: int) -> list[tuple[str, int]] | None:
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure
        self.asked.append(count)
        done = sum(e.is_set() for e in self.fetched)
        if done == len(self.batches):
            threading.Event().wait(0.01)  # as XREADGROUP's BLOCK: a short wait for nothing
            return []
        self.fetched[done].set()
        return self.batches[done][:count]


class Builder:
    """Builds an entry into its name; holds entries named in `hold` until released."""

    def __init__(self, *hold: str) -> None:
        self.held = {name: threading.Event() for name in hold}
        self.started = {name: threading.Event() for name in hold}

    def build(self, entry: tuple[str, int]) -> str | None:
        name = entry[0]
        if name in self.held:
            self.started[name].set()
            assert self.held[name].wait(WAIT_S)
        return None if name.startswith("nothing") else name


def _ahead(source: Source, builder: Builder, **limits: float) -> ReadAhead:
    return ReadAhead("test", source.fetch, builder.build, lambda e: e[1], Limits(**limits))


def _take_all(ahead: ReadAhead, count: int) -> list[str]:
    got: list[str] = []
    for _ in range(200):
        got += ahead.take(0.1, 100)
        if len(got) >= count:
            return got
    raise AssertionError(f"only {got}")


@pytest.fixture
def closing() -> Iterator[list[ReadAhead]]:
    opened: list[ReadAhead] = []
    yield opened
    for ahead in opened:
        ahead.close()
        assert ahead._reader is None or not ahead._reader.is_alive()


def test_the_reader_reads_on_while_a_rollout_is_built(closing: list[ReadAhead]) -> None:
    source = Source([("big", 10)], [("next", 10)], [("after", 10)])
    builder = Builder("big")
    ahead = _ahead(source, builder)
    closing.append(ahead)
    assert ahead.take(0, 10) == []  # starts the threads; nothing built yet
    assert builder.started["big"].wait(WAIT_S)
    assert source.fetched[2].wait(WAIT_S), "the reader fetched on while 'big' was being built"
    assert ahead.take(0.01, 10) == []  # take waits for nothing that is being built
    builder.held["big"].set()
    assert _take_all(ahead, 3) == ["big", "next", "after"]  # built and handed out in order


def test_a_large_entry_is_handed_out_before_the_rest_of_its_batch(
    closing: list[ReadAhead],
) -> None:
    source = Source([("large", 2 << 20), ("small", 10), ("held", 10)], [("a", 1), ("b", 1)])
    builder = Builder("held")
    ahead = _ahead(source, builder, handout_bytes=1 << 20)
    closing.append(ahead)
    assert _take_all(ahead, 1) == ["large"]  # past handout_bytes: out on its own
    assert builder.started["held"].wait(WAIT_S)
    assert ahead.take(0.01, 10) == []  # "small" waits with "held", the rest of its chunk
    builder.held["held"].set()
    assert _take_all(ahead, 4) == ["small", "held", "a", "b"]


def test_the_reader_stays_within_its_buffer(closing: list[ReadAhead]) -> None:
    source = Source([(f"e{i}", 1) for i in range(3)], [("e3", 1)], [("e4", 1)])
    builder = Builder("e0")
    ahead = _ahead(source, builder, buffered=4, fetch_count=3)
    closing.append(ahead)
    ahead.take(0, 1)
    assert source.fetched[1].wait(WAIT_S)
    assert not source.fetched[2].wait(0.3), "4 entries held: the reader waits for a take"
    assert source.asked == [3, 1]
    builder.held["e0"].set()
    assert _take_all(ahead, 5) == ["e0", "e1", "e2", "e3", "e4"]
    assert ahead._held == 0 and ahead._held_bytes == 0


def test_entries_that_build_into_nothing_free_their_place(closing: list[ReadAhead]) -> None:
    source = Source([("nothing1", 5), ("x", 5), ("nothing2", 5)], [("y", 1)])
    ahead = _ahead(source, Builder(), buffered=3)
    closing.append(ahead)
    assert _take_all(ahead, 2) == ["x", "y"]
    assert ahead._held == 0 and ahead._held_bytes == 0


def test_failures_reach_the_caller_after_what_was_built(closing: list[ReadAhead]) -> None:
    source = Source([("ok", 1)])
    source.failure = ConnectionError("redis gone")
    ahead = _ahead(source, Builder())
    closing.append(ahead)
    with pytest.raises(ConnectionError, match="redis gone"):
        for _ in range(200):
            ahead.take(0.1, 10)
    assert _take_all(ahead, 1) == ["ok"]  # the next take starts the reader again

    def broken(entry: tuple[str, int]) -> str:
        if entry[0] == "bad":
            raise ConnectionError("dead letters unreachable")
        return entry[0]

    source = Source([("good", 1), ("bad", 1), ("lost", 1)])
    ahead = ReadAhead("test", source.fetch, broken, lambda e: e[1])
    closing.append(ahead)
    assert _take_all(ahead, 1) == ["good"]
    with pytest.raises(ConnectionError, match="dead letters unreachable"):
        for _ in range(200):
            ahead.take(0.1, 10)
    assert ahead._held == 0 and ahead._held_bytes == 0  # "lost" stays pending upstream


def test_a_paused_reader_waits_for_resume(closing: list[ReadAhead]) -> None:
    calls: list[int] = []

    def fetch(count: int) -> list[tuple[str, int]] | None:
        calls.append(count)
        return PAUSE if len(calls) == 1 else ([("x", 1)] if len(calls) == 2 else [])

    ahead = ReadAhead("test", fetch, Builder().build, lambda e: e[1])
    closing.append(ahead)
    for _ in range(200):
        if ahead.take(0.1, 10) == [] and ahead.paused:
            break
    assert ahead.paused and calls == [calls[0]]  # no fetch while paused
    ahead.resume()
    assert _take_all(ahead, 1) == ["x"]


def test_the_reader_stops_when_nobody_takes(closing: list[ReadAhead]) -> None:
    ahead = _ahead(Source(), Builder(), idle_stop_s=0.05)
    closing.append(ahead)
    ahead.take(0, 1)
    reader = ahead._reader
    assert reader is not None
    reader.join(WAIT_S)
    assert not reader.is_alive() and ahead._reader is None
    ahead.take(0, 1)  # started again
    assert ahead._reader is not None


def test_the_collector_reads_builds_and_quarantines(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    stream = keys.results_stream("r")
    collector = ResultCollector(redis, "r")
    try:
        redis.xadd(stream, {"data": encode(result(0, 0))})
        redis.xadd(stream, {"data": b"not msgpack"})
        redis.xadd(stream, {"data": encode(result(0, 1))})
        received = []
        for _ in range(100):
            received += collector.poll(block_ms=100).received
            if len(received) == 2:
                break
        assert [r.result.rollout_index for r in received] == [0, 1]
        assert all(r.trajectory is not None for r in received)
        assert collector.dead_letters == 1
        assert redis.xlen(keys.dead_letters("r")) == 1
    finally:
        collector.close()
    # a restarted trainer reads what was delivered but never acknowledged, first
    again = ResultCollector(redis, "r")
    try:
        first = again.poll(block_ms=5000).received
        assert [r.result.rollout_index for r in first] == [0, 1]
        again.ack([r.entry_id for r in first])
        assert redis.xlen(stream) == 0
    finally:
        again.close()
