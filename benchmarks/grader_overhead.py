"""What grading costs beyond the tests themselves, and how many gradings to run at once.

First the HTTP service alone (no container). Then, for each fixture task (tests/tasks/): the
time from request to report through the grading service, against the bare `run_tests.sh` time measured with `docker exec` in a container that is
already running. Then throughput with 1, 2, 4, 8 gradings at once. Target: container and diff
overhead under one second a grading.

    uv run python benchmarks/grader_overhead.py [--reps 5] [--gradings 16]

Needs a Docker engine and the base image (docker/build_base_image.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.grading import GradeRequest  # noqa: E402
from grader.client import GraderClient  # noqa: E402
from tests.tasks.build import BuiltTask, build_all  # noqa: E402

TOKEN = "benchmark-token-0123456789"


def bare_test_seconds(task: BuiltTask, reps: int) -> float:
    """Median `bash run_tests.sh` time inside a running container (no start, no diff)."""
    name = f"rlm-bench-{os.getpid()}"
    subprocess.run(
        ["docker", "run", "-d", "--rm", "--network", "none", "--name", name, task.image, "sleep", "600"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        subprocess.run(["docker", "exec", name, "cp", "-r", "/r2e_tests", "r2e_tests"], check=True)
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            subprocess.run(["docker", "exec", name, "bash", "run_tests.sh"], capture_output=True)
            times.append(time.perf_counter() - started)
        return statistics.median(times)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def start_grader(port: int, max_concurrent: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "grader", "--host", "127.0.0.1", "--port", str(port),
         "--max-concurrent", str(max_concurrent), "--label", f"bench-{port}"],
        cwd=ROOT, env={**os.environ, "GRADER_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)


async def grade_many(url: str, requests: list[GradeRequest]) -> tuple[float, list[float]]:
    client = GraderClient(url, token=TOKEN, retries=0)
    started = time.perf_counter()

    async def one(request: GradeRequest) -> float:
        began = time.perf_counter()
        await client.grade(request)
        return time.perf_counter() - began

    try:
        latencies = await asyncio.gather(*(one(r) for r in requests))
    finally:
        await client.aclose()
    return time.perf_counter() - started, list(latencies)


def http_overhead(url: str, reps: int = 400) -> str:
    """The service alone, no container: /health, and a refused POST (the token is checked
    before its 100 kB body is read), sequential on one kept-alive connection."""
    body = b"x" * 100_000
    with httpx.Client() as client:

        def median_ms(call) -> float:
            times = []
            for _ in range(reps):
                began = time.perf_counter()
                call()
                times.append(time.perf_counter() - began)
            return statistics.median(times) * 1000

        health = median_ms(lambda: client.get(f"{url}/health"))
        refused = median_ms(lambda: client.post(f"{url}/grade", content=body))
    return f"| {health:.2f} | {refused:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--gradings", type=int, default=16, help="gradings per concurrency level")
    args = parser.parse_args()
    subprocess.run(["bash", str(ROOT / "docker" / "build_base_image.sh")], check=True)
    with tempfile.TemporaryDirectory() as out:
        _, tasks = build_all(Path(out))

    port = 18931
    grader = start_grader(port, 1)
    url = f"http://127.0.0.1:{port}"
    print("| GET /health p50 ms | POST /grade, wrong token, 100 kB body p50 ms |")
    print("|---|---|")
    print(http_overhead(url) + "\n")
    print("| task | bare run_tests.sh s | request to report s | overhead s |")
    print("|---|---|---|---|")
    try:
        for task in tasks:
            bare = bare_test_seconds(task, args.reps)
            request = GradeRequest(
                instance_id=task.row["repo_name"], docker_image=task.image, diff=task.gold_diff
            )
            asyncio.run(grade_many(url, [request]))  # warm the image cache
            graded = statistics.median(
                asyncio.run(grade_many(url, [request]))[1][0] for _ in range(args.reps)
            )
            print(f"| {task.row['repo_name']} | {bare:.3f} | {graded:.3f} | {graded - bare:.3f} |")
    finally:
        grader.terminate()
        grader.wait(30)

    print(
        f"\n{args.gradings} gradings of the gold patches, N at once (max_concurrent = N), {os.cpu_count()} CPUs"
    )
    print("| N | gradings/s | p50 latency s | p99 latency s |")
    print("|---|---|---|---|")
    for level in (1, 2, 4, 8):
        grader = start_grader(port + level, level)
        try:
            requests = [
                GradeRequest(instance_id=t.row["repo_name"], docker_image=t.image, diff=t.gold_diff)
                for t in (tasks * args.gradings)[: args.gradings]
            ]
            elapsed, latencies = asyncio.run(
                grade_many(f"http://127.0.0.1:{port + level}", requests)
            )
            ordered = sorted(latencies)
            p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
            print(
                f"| {level} | {len(requests) / elapsed:.2f} | {ordered[len(ordered) // 2]:.2f} | {p99:.2f} |"
            )
        finally:
            grader.terminate()
            grader.wait(30)


if __name__ == "__main__":
    main()
