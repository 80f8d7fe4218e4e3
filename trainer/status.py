"""`python -m trainer.status`: what the pipeline is doing, read from Redis.

Prints each run's current step and phase, its groups in flight and unacknowledged results, which
rollouts the trainer waits for and why, the queue's depth and registries, and the live workers
with the job each is running. Nothing is unpickled: jobs are read with the JSON serializer.

A run that ended says so, with when: `finished` or `stopped: <reason>` (the trainer writes its
last phase on the way out). A trainer killed outright (SIGKILL, machine lost) writes nothing, so
every live trainer also beats a heartbeat: a run whose heartbeat is older than `--stale-after-s`
shows as `stale since <time>`. `StatusPublisher` is the trainer's side of the same hash.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Worker
from rq.registry import FailedJobRegistry, StartedJobRegistry

from common import keys
from common.config import REDIS_URL_ENV, redact_url
from common.queue import SERIALIZER, rollout_queue

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0  # how often a live trainer stamps its status hash
STALE_AFTER_S = 60.0  # a run whose heartbeat is older than this shows as stale
FINISHED = "finished"
STOPPED = "stopped"  # the phase is `stopped: <reason>`


class StatusPublisher:
    """Keeps `keys.trainer_status(run_key)` current: phase updates from the loop, a heartbeat
    from a thread of its own (so a long `backend.train()` still beats), and the final phase."""

    def __init__(self, connection: Redis, run_key: str, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.connection, self.key, self.heartbeat_s = (
            connection,
            keys.trainer_status(run_key),
            heartbeat_s,
        )
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="status-heartbeat", daemon=True)

    def start(self, step: int) -> None:
        self.publish(step, "starting", 0, [])
        self._thread.start()

    def publish(self, step: int, phase: str, groups_in_flight: int, waiting_for: list[str]) -> None:
        now = time.time()
        self.connection.hset(
            self.key,
            mapping={
                "step": step,
                "phase": phase,
                "groups_in_flight": groups_in_flight,
                "waiting_for": "\n".join(waiting_for),
                "updated_at": now,
                "heartbeat_at": now,
            },
        )

    def end(self, phase: str) -> None:
        """The run's last word: `finished` or `stopped: <reason>`. Never raises: it runs on the
        way out, perhaps because Redis is gone."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.heartbeat_s + 5)
        now = time.time()
        try:
            self.connection.hset(
                self.key,
                mapping={"phase": phase, "groups_in_flight": 0, "waiting_for": "",
                         "updated_at": now, "heartbeat_at": now, "ended_at": now},
            )  # fmt: skip
        except RedisError as exc:
            log.warning("could not record the run's end (%s) in Redis: %s", phase, exc)

    def _beat(self) -> None:
        while not self._stopped.wait(self.heartbeat_s):
            try:
                self.connection.hset(self.key, "heartbeat_at", time.time())
            except RedisError as exc:
                log.debug("status heartbeat failed: %s", exc)


class SignalNotes:
    """Notes SIGTERM and SIGINT as they arrive, then lets their handlers act as before: asyncio
    turns both into a cancelled task, and the status should say which signal it was."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: list[signal.Signals] = []
        self.previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers
        for sig in self.SIGNALS:
            handler = signal.getsignal(sig)
            if callable(handler):
                self.previous[sig] = handler
                signal.signal(sig, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        sig = signal.Signals(signum)
        self.received.append(sig)
        self.previous[sig](signum, frame)

    def reason(self) -> str | None:
        return self.received[0].name if self.received else None

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()


def stop_reason(exc: BaseException) -> str:
    """Why the trainer stopped, in a few words, for `python -m trainer.status`."""
    if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code > 128:
        try:
            return signal.Signals(exc.code - 128).name
        except ValueError:
            return f"exit {exc.code}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return f"{type(exc).__name__}: {exc}"[:300]


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_run(status: dict[str, str], pending: int, now: float, stale_after_s: float) -> str:
    """One line about a run, from its status hash."""
    step, phase = status.get("step", "?"), status.get("phase", "?")
    if phase == FINISHED or phase.startswith(STOPPED):
        ended = float(status.get("ended_at") or status.get("updated_at") or now)
        unacknowledged = f"{pending} stream entries unacknowledged"
        return f"{phase} at {_when(ended)} (last step {step}), {unacknowledged}"
    beat = float(status.get("heartbeat_at") or status.get("updated_at") or now)
    line = (
        f"step {step} {phase}, {status.get('groups_in_flight', '?')} groups in flight, "
        f"{pending} stream entries unacknowledged"
    )
    if now - beat > stale_after_s:
        return (
            f"stale since {_when(beat)} (was: {line}; no heartbeat for {now - beat:.0f}s: the "
            "trainer was killed or hangs; start it again with the same flags to resume)"
        )
    age = now - float(status.get("updated_at", now))
    return f"{line}, updated {age:.0f}s ago"


def render_status(
    connection: Redis,
    queue_name: str,
    now: float | None = None,
    stale_after_s: float = STALE_AFTER_S,
) -> str:
    now = time.time() if now is None else now
    lines = ["runs:"]
    for key in sorted(connection.scan_iter(match=f"{keys.PREFIX}:*:status")):
        run_key = key.decode().split(":")[1]
        status = {k.decode(): v.decode() for k, v in connection.hgetall(key).items()}
        pending = 0
        stream = keys.results_stream(run_key)
        if connection.exists(stream):
            groups = connection.xinfo_groups(stream)
            pending = sum(int(g["pending"]) for g in groups)
        line = describe_run(status, pending, now, stale_after_s)
        lines.append(f"  {run_key}: {line}")
        if not line.startswith(("stale", FINISHED, STOPPED)):
            for waiting in filter(None, status.get("waiting_for", "").splitlines()):
                lines.append(f"    waiting for {waiting}")
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
    default_url = os.environ.get(REDIS_URL_ENV) or "redis://localhost:6379/0"
    parser.add_argument(
        "--redis-url",
        default=default_url,
        help=f"Redis URL (also from {REDIS_URL_ENV}, which keeps its password off the command "
        f"line; default: {redact_url(default_url)})".replace("%", "%%"),
    )
    parser.add_argument("--queue-name", default="rollouts")
    parser.add_argument(
        "--stale-after-s",
        type=float,
        default=STALE_AFTER_S,
        help=f"A run without a heartbeat this long shows as stale (default: {STALE_AFTER_S:.0f})",
    )
    args = parser.parse_args(argv)
    text = render_status(Redis.from_url(args.redis_url), args.queue_name, None, args.stale_after_s)
    print(text)  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
