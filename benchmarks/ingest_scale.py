"""Wire and ingest at fleet scale: W worker processes post finished rollouts through Redis to
the trainer's collector, which decodes them and builds ART's objects.

Rollouts are shaped like vLLM's answers (every completion token `token_id:N` with a float32
logprob and its bytes, `token_ids` and `stop_reason` extra fields): `--turns` assistant turns of
`--tokens` tokens each, plus `--sub-agents` histories of `--sub-turns` turns. Each worker process
builds its trajectory once, then per rollout encodes a `RolloutResult` and XADDs it, paced so the
fleet offers `--load` times what the trainer absorbed in a first, unpaced run; the trainer (this
process) polls with `ResultCollector.poll` (its reader and builder threads decode and build ART's
objects), acknowledges, and holds the ART objects of `--hold` rollouts at a time, as a trainer
holds a step's groups until train() (`--gc manual`, as the trainer's `--manual-gc`: no
automatic cycle collection, one `gc.collect()` each time a step lets go; `--gc auto`: CPython's).

Printed per wire version (v5: the current one, each reply posted as a `ChoicePart` while its
rollout goes on, the workers spacing them evenly between their results, and the result referring
to them; v4: the replies inline, in a compressed body with their token ids and logprobs beside
it; v3: packed, the whole body compressed; v2: one map per token) and fleet
size: wire bytes per completion token, the codec alone (CPU time, best of --repeats: worker
encode, trainer decode, ART objects, with `--gc auto` the cycle collector's first pass over them
included; us per token of the three; "cold": the process's first ART objects; "freeing":
dropping the ART objects once trained, not in us/token), then rollouts/s,
tokens/s, MB/s, Redis peak memory, trainer CPU per rollout and tokens per CPU-second (all its
threads: one core's worth of ingest; in the "drain" run every rollout is posted before the
trainer reads, so no worker shares this machine's two cores with it: its ingest alone), and
latency percentiles (meaningless in "drain", where rollouts wait in Redis on purpose):
- post -> available: from Redis receiving the XADD (the entry id's millisecond, so up to 1 ms
  more than the truth) until `poll()` has returned the rollout with its `art.Trajectory` built,
  held by the caller and ready for `train()`;
- encode -> available: the same from the worker starting to encode it;
and, in the codec table, "loop stall": the longest a thread (standing in for the trainer's event
loop) waited beyond a 1 ms nap while one rollout was decoded and built in another thread (the
GIL, and the machine's other load).

    uv run python benchmarks/ingest_scale.py [--workers 2 8 32] [--turns 15] [--tokens 1000]
        [--sub-agents 2] [--sub-turns 3] [--rollouts 48] [--versions 5 4 3 2]
    uv run python benchmarks/ingest_scale.py --turns 30 --tokens 4000 --sub-agents 0 \\
        --workers 2 8 --rollouts 24 --versions 5 4   # 120k-token rollouts: latency
    uv run python benchmarks/ingest_scale.py --turns 1 --tokens 10 --sub-agents 0 \\
        --rollouts 20000   # tiny rollouts: where the queue itself tops out
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from ingest_shapes import (  # noqa: E402
    RUN_ID,
    completion_tokens,
    encode_as,
    entries_of,
    make_result,
    make_trajectory,
    referring_to,
    replies_ahead,
)

from common import keys  # noqa: E402
from common.garbage import no_gc  # noqa: E402
from common.wire import ChoicePart, RolloutResult, decode  # noqa: E402
from trainer.collector import ResultCollector  # noqa: E402
from trainer.services import start_redis_server  # noqa: E402
from trainer.trajectories import packed_choice, to_art_trajectory  # noqa: E402


def codec(args: argparse.Namespace, version: int) -> dict[str, float]:
    """CPU seconds of each stage (best of args.repeats), the bytes, and a cold build."""
    trajectory = make_trajectory(args, 0)
    best: dict[str, float] = {}
    if args.gc == "manual":  # as the trainer: no automatic pass over what it builds
        gc.collect()
        gc.disable()
    for repeat in range(args.repeats + 1):
        began = time.process_time()
        result = make_result(trajectory, 0, 0)
        parts = replies_ahead(result) if version == 5 else []
        part_ids = [f"0-{n}" for n in range(len(parts))]
        if parts:
            result = referring_to(result, part_ids)
        data = encode_as(result, version)
        encoded = time.process_time()
        wire_parts = [decode(part, ChoicePart).item for part in parts]
        wire_trajectory = decode(data, RolloutResult).trajectory
        decoded = time.process_time()
        with no_gc():
            replies = {i: packed_choice(p.data) for i, p in zip(part_ids, wire_parts, strict=True)}
        art_trajectory = to_art_trajectory(wire_trajectory, replies.__getitem__)
        [[] for _ in range(10)]  # --gc auto: the cycle collector's pass that building postponed
        built = time.process_time()
        del art_trajectory, replies
        freed = time.process_time()
        if repeat == 0:
            best["cold"] = built - decoded
            continue
        for key, value in (
            ("encode", encoded - began),
            ("decode", decoded - encoded),
            ("build", built - decoded),
            ("free", freed - built),
        ):
            best[key] = min(best.get(key, value), value)
        best["bytes"] = len(data) + sum(map(len, parts))
    gc.enable()
    ticker = Ticker()  # one more: decode and build in a thread beside it (inline replies)
    data = encode_as(make_result(trajectory, 0, 0), 4)
    thread = threading.Thread(
        target=lambda: to_art_trajectory(decode(data, RolloutResult).trajectory)
    )
    thread.start()
    thread.join()
    best["stall"] = ticker.stop()
    return best


def worker_main(
    url: str, version: int, worker: int, count: int, interval: float, offset: float, args: Any
) -> None:
    """Paced (`interval` > 0): rollout i runs from `offset` + i x interval, its replies posted
    evenly through it (v5), its result at its end; workers are offset so that their results do
    not all land at once."""
    connection = Redis.from_url(url)
    trajectory = make_trajectory(args, worker + 1)
    stream = keys.results_stream(RUN_ID)
    start = time.monotonic() + offset
    for index in range(count):
        result = make_result(trajectory, worker, index)
        if version == 5:  # each reply posted while the rollout goes on, then the result
            parts = replies_ahead(result)
            part_ids = []
            for turn, part in enumerate(parts):
                _pace(start + (index + turn / len(parts)) * interval)
                part_ids.append(connection.xadd(stream, {"part": part}).decode())
            result = referring_to(result, part_ids)
        _pace(start + (index + 1) * interval)
        connection.xadd(stream, {"data": encode_as(result, version)})


def _pace(until: float) -> None:
    """Pacing the offered load (a benchmark, not a test)."""
    delay = until - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def fleet(
    args: argparse.Namespace,
    version: int,
    workers: int,
    rate: float | None,
    wire_bytes: int,
    drain: bool = False,
) -> dict[str, float]:
    """One run: W processes post args.rollouts rollouts (paced to `rate` rollouts/s in all);
    `drain`: all of them posted before the trainer starts reading (its ingest alone, no worker
    beside it on this machine's cores)."""
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_redis_server(Path(tmp), appendonly=False)
        try:
            return _fleet(args, version, workers, rate, url, drain) | {
                "MB/s": 0.0,
                "wire_bytes": wire_bytes,
            }
        finally:
            server.terminate()
            server.wait()


def _fleet(
    args: argparse.Namespace,
    version: int,
    workers: int,
    rate: float | None,
    url: str,
    drain: bool,
) -> dict:
    connection = Redis.from_url(url)
    collector = ResultCollector(connection, RUN_ID)
    per_worker = max(1, args.rollouts // workers)
    total = per_worker * workers
    interval = workers / rate if rate else 0.0
    context = mp.get_context("fork")
    processes = [
        context.Process(
            target=worker_main,
            args=(url, version, w, per_worker, interval, w * interval / workers, args),
        )
        for w in range(workers)
    ]
    held: list[Any] = []  # ART's trajectories, kept as the trainer keeps a step's groups
    posted: list[float] = []  # Redis received the XADD -> poll() returned it built
    encoded: list[float] = []  # the worker began encoding -> the same
    received = 0
    peak_memory = 0
    for process in processes:
        process.start()
    if drain:
        for process in processes:
            process.join()
    if args.gc == "manual":
        gc.disable()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    next_sample = 0.0
    while received < total:
        polled = collector.poll(block_ms=1000, count=args.batch)
        now = time.time()
        for item in polled.received:
            posted.append(now - int(item.entry_id.split("-")[0]) / 1000)
            encoded.append(now - item.result.finished_at)
        received += len(polled.received)
        if polled.rejected:
            raise RuntimeError(f"rejected: {polled.rejected[0]}")
        if time.perf_counter() >= next_sample:
            next_sample = time.perf_counter() + 0.2
            peak_memory = max(peak_memory, connection.info("memory")["used_memory"])
        collector.ack([e for item in polled.received for e in entries_of(item)])
        held += [item.trajectory for item in polled.received]
        if len(held) >= args.hold:  # the step trained: its groups let go
            held.clear()
            if args.gc == "manual":
                gc.collect()
        del polled
    held.clear()
    if args.gc == "manual":
        gc.collect()
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    gc.enable()
    collector.close()
    for process in processes:
        process.join()
    tokens = completion_tokens(args) * total
    return {
        "rollouts/s": total / wall,
        "Mtok/s": tokens / wall / 1e6,
        "redis MB": peak_memory / 1e6,
        "cpu ms/rollout": cpu / total * 1000,
        "Mtok/cpu-s": tokens / cpu / 1e6,
        "post p50 ms": _percentile(posted, 0.5) * 1000,
        "post p99 ms": _percentile(posted, 0.99) * 1000,
        "encode p99 ms": _percentile(encoded, 0.99) * 1000,
    }


class Ticker:
    """A thread standing in for the training loop's event loop: it asks for 1 ms naps and
    records how much later than asked it woke (the GIL held by ingest, mostly)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.perf_counter()
            time.sleep(0.001)
            self.worst = max(self.worst, time.perf_counter() - began - 0.001)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.worst


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def rq_ceiling(jobs: int, workers: int) -> None:
    """RQ alone: the trainer enqueueing `jobs` group jobs (as `enqueue_group` does), then
    `workers` SimpleWorker processes (the rollout worker's class) running no-op jobs."""
    from rq.worker import SimpleWorker

    from common.queue import SERIALIZER, rollout_queue

    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_redis_server(Path(tmp), appendonly=False)
        try:
            queue = rollout_queue("bench", Redis.from_url(url))
            began = time.perf_counter()
            for index in range(jobs):
                queue.enqueue("builtins.str", "x" * 1000, job_id=f"job-{index}",
                              job_timeout=600, result_ttl=24 * 3600)  # fmt: skip
            enqueue_s = time.perf_counter() - began

            def work() -> None:
                connection = Redis.from_url(url)
                worker = SimpleWorker([rollout_queue("bench", connection)], connection=connection,
                                      serializer=SERIALIZER)  # fmt: skip
                worker.work(burst=True, with_scheduler=False, logging_level="ERROR")

            context = mp.get_context("fork")
            processes = [context.Process(target=work) for _ in range(workers)]
            began = time.perf_counter()
            for process in processes:
                process.start()
            for process in processes:
                process.join()
            run_s = time.perf_counter() - began
        finally:
            server.terminate()
            server.wait()
    print(f"\nRQ alone, {jobs} jobs: trainer enqueues {jobs / enqueue_s:,.0f} jobs/s "
          f"({enqueue_s / jobs * 1e3:.2f} ms a job); {workers} worker processes run "
          f"{jobs / run_s:,.0f} no-op jobs/s ({run_s / jobs * workers * 1e3:.1f} ms a job "
          "per worker)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--turns", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--sub-agents", type=int, default=2)
    parser.add_argument("--sub-turns", type=int, default=3)
    parser.add_argument("--rollouts", type=int, default=48)
    parser.add_argument("--versions", type=int, nargs="+", default=[5, 4, 3, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="results per poll()")
    parser.add_argument("--load", type=float, default=0.5, help="paced runs: share of capacity")
    parser.add_argument(
        "--hold",
        type=int,
        default=64,
        help="rollouts whose ART objects the trainer holds at once (a step)",
    )
    parser.add_argument(
        "--gc",
        choices=["auto", "manual"],
        default="manual",
        help="manual (the trainer's default, --manual-gc): no automatic cycle collection, one "
        "gc.collect() per step; auto: CPython's automatic collection",
    )
    parser.add_argument("--rq-jobs", type=int, default=0, help="also measure RQ alone")
    args = parser.parse_args()
    if args.rq_jobs:
        for workers in args.workers:
            rq_ceiling(args.rq_jobs, workers)
        return
    tokens = completion_tokens(args)
    print(f"rollout: {args.turns} turns x {args.tokens} tokens + {args.sub_agents} sub-agents x "
          f"{args.sub_turns} turns = {tokens:,} completion tokens")  # fmt: skip
    print(f"\ncodec alone (CPU time, best of {args.repeats}), one process")
    print(
        "| wire | bytes/token | encode ms | decode ms | ART objects ms (cold) | us/token "
        "| freeing ms | loop stall ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    sizes = {}
    for version in args.versions:
        c = codec(args, version)
        sizes[version] = int(c["bytes"])
        total = c["encode"] + c["decode"] + c["build"]
        print(f"| v{version} | {c['bytes'] / tokens:.1f} | {c['encode'] * 1e3:.1f} | "
              f"{c['decode'] * 1e3:.1f} | {c['build'] * 1e3:.1f} ({c['cold'] * 1e3:.1f}) | "
              f"{total / tokens * 1e6:.2f} | {c['free'] * 1e3:.1f} | "
              f"{c['stall'] * 1e3:.1f} |")  # fmt: skip
    print("\nfleet: W worker processes -> Redis -> trainer collector (decode + ART objects), "
          f"{args.hold} rollouts held at a time, cycle collector {args.gc}")  # fmt: skip
    header = ["wire", "W", "run"]
    rows = []
    for version in args.versions:
        size = sizes[version]
        for workers in args.workers:
            flat_out = fleet(args, version, workers, None, size)
            paced = fleet(args, version, workers, flat_out["rollouts/s"] * args.load, size)
            rows.append([f"v{version}", workers, "max", flat_out])
            rows.append([f"v{version}", workers, f"{args.load:.0%} load", paced])
            print(f"  v{version} W={workers}: {flat_out['rollouts/s']:.1f} rollouts/s", flush=True)
        drained = fleet(args, version, args.workers[0], None, size, drain=True)
        rows.append([f"v{version}", args.workers[0], "drain", drained])
    for row in rows:
        stats = row[3]
        stats["MB/s"] = stats.pop("wire_bytes") * stats["rollouts/s"] / 1e6
    columns = ["rollouts/s", "Mtok/s", "MB/s", "redis MB", "cpu ms/rollout", "Mtok/cpu-s",
               "post p50 ms", "post p99 ms", "encode p99 ms"]  # fmt: skip
    print("| " + " | ".join(header + columns) + " |")
    print("|" + "---|" * (len(header) + len(columns)))
    for version, workers, run, stats in rows:
        cells = [version, str(workers), run] + [f"{stats[c]:,.2f}" for c in columns]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
