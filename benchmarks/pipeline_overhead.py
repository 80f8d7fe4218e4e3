"""Queue pipeline vs ART's in-process gather, on the same rollouts.

Every rollout is the worker's real rollout function (one REPL step) against the scripted LLM,
which answers after a fixed delay (default 1 s): a fixed simulated duration, no real model.

(a) queue: groups are enqueued as RQ jobs (as the trainer does: a new job as soon as one is
    complete, never more than --concurrency rollouts in flight), run by separate
    `python -m rollout_workers` processes, posted to the results stream and read back through
    the trainer's collector.
(b) in-process: `art.gather_trajectory_groups` runs the same rollout coroutines in this process,
    with the same concurrency.

Prints a table: rollouts/s, per-rollout overhead (enqueue-to-result time minus the rollout's own
duration), p50/p99 enqueue-to-result latency, idle worker RSS. Targets: overhead < 5 ms a
rollout; throughput of (a) >= 0.95 of (b) with 64 concurrent 1-second rollouts.

    uv run python benchmarks/pipeline_overhead.py [--concurrency 64] [--waves 3] [--delay-s 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TQDM_DISABLE", "1")

from common.config import ExperimentConfig, import_callable  # noqa: E402
from common.queue import enqueue_group, rollout_queue  # noqa: E402
from common.wire import PolicyRef, RolloutJob, Scenario  # noqa: E402
from producer import Task  # noqa: E402
from rollout_workers.job import score  # noqa: E402
from rollout_workers.policy import PolicyClient  # noqa: E402
from rollout_workers.rollout import run_rollout  # noqa: E402
from tests.fakes.scripted_llm import ScriptedLLM  # noqa: E402
from trainer.admission import build_job  # noqa: E402
from trainer.collector import ResultCollector  # noqa: E402
from trainer.services import start_redis_server  # noqa: E402

RUN_ID = "bench"
# One REPL step, no retries; the context and output budgets are the config's defaults.
CONFIG = ExperimentConfig(
    max_steps=1, max_completion_tokens=64, code_timeout_s=30, request_timeout_s=60,
    rollout_retries=0, retry_backoff_s=0.1, lease_ttl_s=30, grader="none",
    reward_fn="common.rewards:finished_reward",
)  # fmt: skip


def make_job(index: int, group_size: int, endpoint: str, step: int = 0) -> RolloutJob:
    task = Task(
        scenario=Scenario(instance_id=f"bench__{index}", problem_statement="Call finish()."),
        grading=None,
    )
    policy = PolicyRef(inference_name="bench@0", policy_step=0, endpoint=endpoint)
    return build_job(CONFIG, RUN_ID, "", (step, index), task, policy, group_size)


def run_through_queue(
    connection: Redis, jobs: list[RolloutJob], in_flight: int
) -> tuple[list[float], list[float], float]:
    """Enqueue like the trainer (a new job when one completes); (latencies, overheads, seconds)."""
    collector = ResultCollector(connection, RUN_ID)
    queue = rollout_queue("bench", connection)
    waiting = list(jobs)
    received_per_job: dict[str, int] = {}
    latencies: list[float] = []
    overheads: list[float] = []
    total = sum(job.rollouts_per_group for job in jobs)
    started = time.time()

    def enqueue_next() -> None:
        job = waiting.pop(0).model_copy(update={"enqueued_at": time.time()})
        enqueue_group(queue, job, timeout_s=600, retries=0)

    for _ in range(min(in_flight, len(waiting))):
        enqueue_next()
    try:
        while len(latencies) < total:
            for received in collector.poll(block_ms=200).received:
                now = time.time()
                result = received.result
                latencies.append(now - result.enqueued_at)
                overheads.append(
                    now - result.enqueued_at - (result.finished_at - result.started_at)
                )
                collector.ack([received.entry_id])
                received_per_job[result.job_id] = received_per_job.get(result.job_id, 0) + 1
                if received_per_job[result.job_id] == result_size(jobs, result.job_id) and waiting:
                    enqueue_next()
    finally:
        collector.close()  # its reader thread would otherwise read ahead for the next wave's
    return latencies, overheads, time.time() - started


def result_size(jobs: list[RolloutJob], job_id: str) -> int:
    return next(job.rollouts_per_group for job in jobs if job.job_id == job_id)


def bench_queue(
    redis_url: str, endpoint: str, jobs: int, group_size: int, workers: int
) -> list[dict]:
    connection = Redis.from_url(redis_url)
    connection.flushdb()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rollout_workers",
                "--redis-url",
                redis_url,
                "--queue-name",
                "bench",
            ],
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        while len(connection.keys("rq:worker:*")) < workers:
            time.sleep(0.1)
        idle_rss = [psutil.Process(p.pid).memory_info().rss / 2**20 for p in procs]
        # One unmeasured wave: workers are long-lived, their first job is not the steady state.
        warm = [make_job(i, group_size, endpoint, step=1) for i in range(workers)]
        run_through_queue(connection, warm, workers)
        measured = [make_job(i, group_size, endpoint) for i in range(jobs)]
        latencies, overheads, elapsed = run_through_queue(connection, measured, workers)
        # The pipeline's own latency, without 16 workers competing for this machine's 2 cores.
        alone = [make_job(i, group_size, endpoint, step=2) for i in range(8)]
        alone_latencies, alone_overheads, alone_elapsed = run_through_queue(connection, alone, 1)
        after_rss = [psutil.Process(p.pid).memory_info().rss / 2**20 for p in procs]
    finally:
        for process in procs:
            process.terminate()
        for process in procs:
            process.wait(30)
    return [
        _row("queue (RQ + stream)", latencies, overheads, elapsed, idle_rss, after_rss),
        _row(
            "queue, one job at a time",
            alone_latencies,
            alone_overheads,
            alone_elapsed,
            idle_rss,
            after_rss,
        ),
    ]


def bench_in_process(endpoint: str, jobs: int, group_size: int, concurrency: int) -> dict:
    import art

    from trainer.trajectories import to_art_trajectory

    async def run() -> tuple[list[float], list[float], float]:
        semaphore = asyncio.Semaphore(concurrency)
        prompt = import_callable("common.prompts:r2e_system_prompt")()
        reward_fn = import_callable("common.rewards:finished_reward")
        latencies: list[float] = []
        overheads: list[float] = []

        async def one(job: RolloutJob, client: PolicyClient) -> art.Trajectory:
            async with semaphore:
                admitted = time.time()
                wire = await score(job, await run_rollout(job, client, prompt), None, reward_fn)
                duration = time.time() - admitted
                trajectory = to_art_trajectory(wire)
                done = time.time()
            latencies.append(done - admitted)
            overheads.append(done - admitted - duration)
            return trajectory

        job0 = make_job(0, group_size, endpoint)
        client = PolicyClient(job0.policy, job0.limits)

        async def gather(job_list: list[RolloutJob]) -> None:
            await art.gather_trajectory_groups(
                (
                    art.TrajectoryGroup(one(job, client) for _ in range(group_size))
                    for job in job_list
                ),
                pbar_desc=None,
            )

        await gather(
            [make_job(i, group_size, endpoint, step=1) for i in range(concurrency // group_size)]
        )
        latencies.clear()
        overheads.clear()
        started = time.time()
        await gather([make_job(i, group_size, endpoint) for i in range(jobs)])
        elapsed = time.time() - started
        await client.aclose()
        return latencies, overheads, elapsed

    latencies, overheads, elapsed = asyncio.run(run())
    rss = psutil.Process().memory_info().rss / 2**20
    return _row("in-process (art.gather)", latencies, overheads, elapsed, [rss], [rss])


def _row(
    name: str,
    latencies: list[float],
    overheads: list[float],
    elapsed: float,
    idle_rss: list[float],
    after_rss: list[float],
) -> dict:
    ordered = sorted(latencies)
    return {
        "path": name,
        "rollouts": len(latencies),
        "rollouts/s": len(latencies) / elapsed,
        "overhead ms (median)": 1000 * statistics.median(overheads),
        "p50 enqueue-to-result s": ordered[len(ordered) // 2],
        "p99 enqueue-to-result s": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "RSS MB idle (max)": max(idle_rss),
        "RSS MB after (max)": max(after_rss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=64, help="rollouts in flight")
    parser.add_argument("--group-size", type=int, default=4, help="rollouts per job")
    parser.add_argument("--waves", type=int, default=3, help="rollouts = concurrency x waves")
    parser.add_argument("--delay-s", type=float, default=1.0, help="simulated rollout duration")
    args = parser.parse_args()
    workers = args.concurrency // args.group_size
    jobs = workers * args.waves
    redis_dir = Path(tempfile.mkdtemp())
    redis, redis_url = start_redis_server(redis_dir, appendonly=False)
    try:
        with ScriptedLLM(
            script=lambda messages, rng: "Nothing to run.", delay_s=args.delay_s
        ) as llm:
            rows = [
                bench_in_process(llm.url, jobs, args.group_size, args.concurrency),
                *bench_queue(redis_url, llm.url, jobs, args.group_size, workers),
            ]
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(redis_dir, ignore_errors=True)
    columns = list(rows[0])
    print(
        f"{jobs * args.group_size} rollouts of {args.delay_s}s, {args.concurrency} concurrent, "
        f"{workers} workers x groups of {args.group_size}"
    )
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")
    ratio = rows[1]["rollouts/s"] / rows[0]["rollouts/s"]
    print(f"queue / in-process throughput: {ratio:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
