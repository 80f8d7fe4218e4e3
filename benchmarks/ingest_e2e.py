"""End to end through the real worker and trainer code: bytes Redis receives and CPU spent per
million completion tokens, response parsing included.

The scripted LLM (its own process, not counted) answers `--turns` turns of `--tokens` tokens
each. This process plays the local worker and the trainer: `PolicyClient.complete` (HTTP, JSON
parsing, `check_choice`), a `WireTrajectory` of those choices, `encode`, XADD to a fresh Redis,
then `ResultCollector.poll` (its reader and builder threads decode and build ART's objects).
Its CPU time (all threads) is the trainer's plus the worker's; Redis's own
`total_net_input_bytes` is what it received.

With `--version 5` each reply goes through the worker's `ReplyPoster` (posted ahead of its
result when it has at least --post-replies-over-tokens tokens, as a worker does). With `--gc
manual` (the default of both the worker and the trainer, `--manual-gc`) automatic cycle
collection is off and one collection runs after each rollout, counted: at least as often as
either does it (a worker after each job, the trainer after each step).

    uv run python benchmarks/ingest_e2e.py [--turns 8] [--tokens 4000] [--rollouts 4] [--version 5]
        [--gc manual|auto]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from ingest_shapes import RUN_ID, encode_as, entries_of, make_result  # noqa: E402

from common import keys  # noqa: E402
from common.garbage import Collection, manual_collection  # noqa: E402
from common.wire import (  # noqa: E402
    PolicyRef,
    RolloutLimits,
    WireItem,
    WireTrajectory,
)
from rollout_workers.policy import PolicyClient, warm_up  # noqa: E402
from rollout_workers.replies import ReplyPoster  # noqa: E402
from tests.jobs import rollout_job  # noqa: E402
from trainer.collector import ResultCollector  # noqa: E402
from trainer.services import free_port, start_redis_server  # noqa: E402

LLM = """
import random, sys, threading
from tests.fakes.scripted_llm import ScriptedLLM
words = ["def", "self.x", "return", "np.array(", "pandas", "if", "not", "None:", "#", "fix"]
rng = random.Random(0)
text = " ".join(rng.choice(words) for _ in range({tokens}))
with ScriptedLLM(port={port}, script=lambda messages, rng: text) as llm:
    print("ready", flush=True)
    threading.Event().wait()
"""


async def rollouts(
    args: argparse.Namespace, endpoint: str, url: str, collection: Collection
) -> tuple[int, float]:
    limits = RolloutLimits(
        max_steps=args.turns, max_context_tokens=10**6, max_completion_tokens=args.tokens + 10,
        code_timeout_s=10.0, max_output_chars=1000, request_timeout_s=60.0, rollout_retries=0,
        retry_backoff_s=0.1,
    )  # fmt: skip
    client = PolicyClient(PolicyRef(inference_name="m@0", policy_step=0, endpoint=endpoint), limits)
    job = rollout_job(
        endpoint, run_id=RUN_ID, post_replies_over_tokens=args.post_replies_over_tokens
    )
    connection = Redis.from_url(url)
    collector = ResultCollector(connection, RUN_ID)
    stream = keys.results_stream(RUN_ID)
    tokens = 0
    cpu0 = time.process_time()
    for index in range(args.rollouts):
        items = [WireItem(kind="message", data={"role": "user", "content": "Fix the bug."})]
        poster = ReplyPoster(connection, job, index)
        for _ in range(args.turns):
            completion = await client.complete([{"role": "user", "content": "go on"}])
            tokens += completion.completion_tokens
            if args.version == 5:
                items.append(poster.item(completion.choice))
            else:
                items.append(WireItem(kind="choice", data=completion.choice))
            items.append(WireItem(kind="message", data={"role": "user", "content": "ok"}))
        trajectory = WireTrajectory(messages_and_choices=items, reward=1.0)
        result = make_result(trajectory, 0, index)  # named as the poster named its replies
        result = result.model_copy(update={"rollout_id": keys.rollout_id(job.job_id, index)})
        connection.xadd(stream, {"data": encode_as(result, args.version)})
        received = []
        while not received:  # the first poll reads the (empty) backlog
            polled = collector.poll(block_ms=1000)
            assert not polled.rejected, polled.rejected
            received = polled.received
        assert received[0].trajectory is not None
        collector.ack(entries_of(received[0]))
        del received, polled  # the trainer lets a step's groups go before it collects
        collection.collect()
    cpu = time.process_time() - cpu0
    collector.close()
    await client.aclose()
    return tokens, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--version", type=int, default=5, choices=[2, 3, 4, 5])
    parser.add_argument("--post-replies-over-tokens", type=int, default=1024)
    parser.add_argument("--gc", choices=["manual", "auto"], default="manual")
    args = parser.parse_args()
    port = free_port()
    llm = subprocess.Popen(
        [sys.executable, "-c", LLM.format(tokens=args.tokens, port=port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert llm.stdout is not None and llm.stdout.readline().strip() == "ready"
        with tempfile.TemporaryDirectory() as tmp:
            redis, url = start_redis_server(Path(tmp), appendonly=False)
            try:
                before = Redis.from_url(url).info("stats")["total_net_input_bytes"]
                endpoint = f"http://127.0.0.1:{port}/v1"
                warm_up()  # as a worker does at start-up, before it freezes its heap
                with manual_collection(args.gc == "manual") as collection:
                    tokens, cpu = asyncio.run(rollouts(args, endpoint, url, collection))
                received = Redis.from_url(url).info("stats")["total_net_input_bytes"] - before
            finally:
                redis.terminate()
                redis.wait()
    finally:
        llm.terminate()
        llm.wait()
    print("| wire | gc | completion tokens | Redis bytes/token | CPU s per 1M tokens |")
    print("|---|---|---|---|---|")
    print(
        f"| v{args.version} | {args.gc} | {tokens:,} | {received / tokens:.1f} "
        f"| {cpu / tokens * 1e6:.2f} |"
    )


if __name__ == "__main__":
    main()
