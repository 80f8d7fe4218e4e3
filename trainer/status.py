"""`python -m trainer.status`: what the pipeline is doing, read from Redis.

Prints each run's current step and phase, its groups in flight and unacknowledged results, which
rollouts the trainer waits for and why, the queue's depth and registries, and the live workers
with the job each is running. Nothing is unpickled: jobs are read with the JSON serializer.
"""

from __future__ import annotations

import argparse
import sys
import time

from redis import Redis
from rq import Worker
from rq.registry import FailedJobRegistry, StartedJobRegistry

from common import keys
from common.queue import SERIALIZER, rollout_queue


def render_status(connection: Redis, queue_name: str) -> str:
    now = time.time()
    lines = ["runs:"]
    for key in sorted(connection.scan_iter(match=f"{keys.PREFIX}:*:status")):
        run_key = key.decode().split(":")[1]
        status = {k.decode(): v.decode() for k, v in connection.hgetall(key).items()}
        pending = 0
        stream = keys.results_stream(run_key)
        if connection.exists(stream):
            groups = connection.xinfo_groups(stream)
            pending = sum(int(g["pending"]) for g in groups)
        age = now - float(status.get("updated_at", now))
        lines.append(
            f"  {run_key}: step {status.get('step', '?')} {status.get('phase', '?')}, "
            f"{status.get('groups_in_flight', '?')} groups in flight, "
            f"{pending} results unacknowledged, updated {age:.0f}s ago"
        )
        for line in filter(None, status.get("waiting_for", "").splitlines()):
            lines.append(f"    waiting for {line}")
    if len(lines) == 1:
        lines.append("  (none)")
    queue = rollout_queue(queue_name, connection)
    running, failed = StartedJobRegistry(queue=queue).count, FailedJobRegistry(queue=queue).count
    lines.append(f"queue {queue_name}: {len(queue)} waiting, {running} running, {failed} failed")
    workers = Worker.all(connection=connection, serializer=SERIALIZER)
    lines.append(f"workers: {len(workers)}")
    for worker in sorted(workers, key=lambda w: w.name):
        beat = worker.last_heartbeat.timestamp() if worker.last_heartbeat else now
        job = worker.get_current_job_id() or "-"
        lines.append(
            f"  {worker.name}: {worker.get_state()}, job {job}, heartbeat {now - beat:.0f}s ago"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.status", description=__doc__)
    parser.add_argument("--redis-url", default="redis://localhost:6379/0")
    parser.add_argument("--queue-name", default="rollouts")
    args = parser.parse_args(argv)
    print(render_status(Redis.from_url(args.redis_url), args.queue_name))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
