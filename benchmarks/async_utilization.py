"""Asynchronous training's utilisation, with CPU stand-ins for the GPU parts.

The real trainer (`trainer.loop.run_training`, in this process), RQ rollout workers and a
private Redis; the recording backend's `train()` sleeps a fixed time (`RECORDING_BACKEND_TRAIN_S`,
--train-s) and the scripted LLM's per-request delay is lognormal (median --median-s, p99 =
--p99-ratio x median, seeded). One run per case:

- S = --max-steps-off-policy in --s (default 0, 1, 2);
- over-provisioning off, or on with K = --over-provision (default groups_per_step / 2);
- inference *available* during train() (dedicated mode: --trainer-gpu-ids 0
  --inference-gpu-ids 1) or *asleep* (shared-GPU mode: the trainer's gateway holds requests
  while train() runs and forwards them when it ends). Both go through the gateway.

Every case has the same slots (--max-concurrent = --slots, default (groups_per_step + K) x
rollouts_per_group), served by slots / rollouts_per_group workers started once for all cases.
Figures are over the steady state, from the end of the first train() to the end of the last
(`fill s`: from the trainer's start to the end of its first train()):

- trained steps: train() calls / steps logged (a step with no complete group trains nothing);
- steps/h: (train() calls - 1) x 3600 / the window;
- trainer idle: share of the window not inside train() (the recording backend's own times);
- worker idle: 1 - (rollouts running, integrated over the window) / (slots x window), a
  rollout running from its `started_at` to its `finished_at` as posted to the results stream
  (a rollout cancelled before it posts is not counted);
- LLM idle: the same with requests in flight at the scripted LLM instead of rollouts running
  (REPL time and requests held by the sleeping gateway count idle);
- staleness: per trained rollout, the step it trained at minus the policy step that sampled it;
- dropped: groups dropped, by reason (`pipeline/groups_dropped/<reason>`); cancelled:
  `pipeline/groups_cancelled`.

Zero-variance groups are kept (--keep-zero-variance) unless --drop-zero-variance. Target
(reported, not asserted): S = 2, over-provisioned, inference available: trainer idle < 10% and
>= 2x the steps/h of S = 0.

    uv run python benchmarks/async_utilization.py [--steps 8] [--s 0,1,2] [--train-s 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Worker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TQDM_DISABLE", "1")

from common import keys  # noqa: E402
from common.config import ExperimentConfig  # noqa: E402
from common.errors import WireError  # noqa: E402
from common.flags import parse_config  # noqa: E402
from common.log import setup_logging  # noqa: E402
from common.queue import rollout_queue  # noqa: E402
from common.wire import RolloutResult, decode  # noqa: E402
from tests.dataset import write_r2e_jsonl  # noqa: E402
from tests.fakes.recording_backend import TRAIN_S_ENV  # noqa: E402
from tests.fakes.scripted_llm import ScriptedLLM, lognormal_delay  # noqa: E402
from trainer.gateway import GATEWAY_TOKEN_ENV  # noqa: E402
from trainer.services import free_port, start_redis_server  # noqa: E402

GATEWAY_TOKEN = "async-utilization-benchmark-token"
QUEUE = "async-utilization"


@dataclass(frozen=True)
class Case:
    s: int
    over_provision: int
    asleep: bool

    @property
    def label(self) -> str:
        mode = "asleep" if self.asleep else "available"
        return f"S={self.s} K={self.over_provision} {mode}"


class Meter:
    """Measures one case from beside it, in a thread: the scripted LLM's `busy_seconds()`,
    sampled every 20 ms, and every rollout's (started_at, finished_at), read from the results
    streams created after the case began (plain XREAD, no consumer group: the trainer's reading
    is untouched; it deletes an entry only once the step that used it is checkpointed)."""

    def __init__(self, llm: ScriptedLLM, connection: Redis) -> None:
        self.llm, self.connection = llm, connection
        self.samples: list[tuple[float, float]] = []
        self.spans: dict[tuple[str, int, float], tuple[float, float]] = {}
        self._old = set(self._streams())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meter", daemon=True)

    def __enter__(self) -> Meter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _streams(self) -> list[bytes]:
        return list(self.connection.scan_iter(match=f"{keys.PREFIX}:*:results", count=1000))

    def _run(self) -> None:
        cursors: dict[bytes, bytes] = {}
        while not self._stop.is_set():
            self.samples.append((time.time(), self.llm.busy_seconds()))
            for key in set(self._streams()) - self._old:
                cursors.setdefault(key, b"0-0")
            if not cursors:
                self._stop.wait(0.02)
                continue
            for stream, entries in self.connection.xread(cursors, block=20) or []:
                for entry_id, fields in entries:
                    cursors[stream] = entry_id
                    with contextlib.suppress(WireError, ValueError):
                        r = decode(fields.get(b"data", b""), RolloutResult)
                        self.spans[(r.job_id, r.rollout_index, r.started_at)] = (
                            r.started_at,
                            r.finished_at,
                        )

    def requests(self, start: float, end: float) -> float:
        """Request-seconds the LLM served inside [start, end] (interpolated between samples)."""

        def at(when: float) -> float:
            before = [x for x in self.samples if x[0] <= when] or self.samples[:1]
            after = [x for x in self.samples if x[0] >= when] or self.samples[-1:]
            (t0, b0), (t1, b1) = before[-1], after[0]
            return b0 if t1 <= t0 else b0 + (b1 - b0) * (when - t0) / (t1 - t0)

        return at(end) - at(start)

    def rollouts(self, start: float, end: float) -> float:
        """Rollout-seconds spent inside [start, end]."""
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in self.spans.values())


class Workers:
    """Rollout workers shared by every case (their start-up is paid once): the queue is emptied
    and every worker idle before a case begins."""

    def __init__(self, count: int, redis_url: str, log: Path) -> None:
        self.redis_url, self.connection = redis_url, Redis.from_url(redis_url)
        self.log = open(log, "a")  # noqa: SIM115 (closed in stop)
        command = [sys.executable, "-m", "rollout_workers", "--redis-url", redis_url]
        self.processes = [
            subprocess.Popen([*command, "--queue-name", QUEUE], stdout=self.log, stderr=self.log)
            for _ in range(count)
        ]
        self.wait_idle(count, timeout_s=120)

    def wait_idle(self, count: int, timeout_s: float = 60) -> None:
        rollout_queue(QUEUE, self.connection).empty()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"a rollout worker exited; see {self.log.name}")
            found = Worker.all(connection=self.connection)
            if len(found) >= count and all(w.get_state() == "idle" for w in found):
                return
            time.sleep(0.1)
        raise RuntimeError(f"rollout workers not idle after {timeout_s}s; see {self.log.name}")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(30)
        self.log.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def trainer_flags(
    args: argparse.Namespace, case: Case, redis_url: str, llm_url: str, dataset: Path, art: Path
) -> list[str]:
    port = free_port()
    flags = {
        "--backend": "tests.fakes.recording_backend:create",
        "--vllm-url": llm_url,
        "--redis-url": redis_url,
        "--dataset": str(dataset),
        "--dataset-size": str(args.steps * args.groups_per_step),
        "--num-epochs": "1",
        "--art-path": str(art),
        "--log-dir": str(art / "logs"),
        "--groups-per-step": str(args.groups_per_step),
        "--rollouts-per-group": str(args.rollouts_per_group),
        "--max-concurrent": str(args.slots),
        "--local-workers": "0",
        "--queue-name": QUEUE,
        "--max-steps": str(args.turns),
        "--grader": "none",
        "--reward-fn": "common.rewards:finished_reward",
        "--lease-ttl-s": "10",
        "--retry-backoff-s": "0.05",
        "--health-check-interval": "30",
        "--gateway-port": str(port),
        "--public-policy-url": f"http://127.0.0.1:{port}/v1",
        "--max-steps-off-policy": str(case.s),
        "--over-provision": str(case.over_provision),
    }
    extra = ["--no-wandb"]
    if not args.drop_zero_variance:
        extra.append("--keep-zero-variance")
    if not case.asleep:
        extra += ["--trainer-gpu-ids", "0", "--inference-gpu-ids", "1"]
    return [part for item in flags.items() for part in item] + extra


def run_case(
    args: argparse.Namespace, case: Case, llm: ScriptedLLM, workers: Workers, workdir: Path
) -> dict[str, Any]:
    from trainer.loop import run_training

    workers.wait_idle(len(workers.processes))  # nothing left running from the case before
    art = workdir / case.label.replace(" ", "_").replace("=", "")
    dataset = write_r2e_jsonl(workdir / "r2e.jsonl", rows=args.steps * args.groups_per_step)
    redis_url = workers.redis_url
    argv = trainer_flags(args, case, redis_url, llm.url, dataset, art)
    config = parse_config(argv, ExperimentConfig, "trainer")
    logging.getLogger("benchmark").info("case %s: %s", case.label, " ".join(argv))
    started = time.time()
    with Meter(llm, workers.connection) as meter:
        asyncio.run(run_training(config))
    calls = read_jsonl(config.model_dir / "train_calls.jsonl")
    history = [
        h for h in read_jsonl(config.model_dir / "history.jsonl") if "pipeline/rollouts" in h
    ]
    return summarise(args, case, calls, history, meter, started)


def summarise(
    args: argparse.Namespace,
    case: Case,
    calls: list[dict[str, Any]],
    history: list[dict[str, Any]],
    meter: Meter,
    started: float,
) -> dict[str, Any]:
    ends = [c["finished_at"] for c in calls] or [started]
    first_end, last_end = ends[0], ends[-1]
    window = last_end - first_end
    nan = float("nan")
    training = sum(c["finished_at"] - c["started_at"] for c in calls[1:])
    served = meter.requests(first_end, last_end)
    rolling = meter.rollouts(first_end, last_end)
    staleness = [
        call["step"] - 1 - version
        for call in calls
        for group in call["groups"]
        for version in group["policy_versions"]
    ]
    dropped: collections.Counter[str] = collections.Counter()
    for row in history:
        for key, value in row.items():
            if key.startswith("pipeline/groups_dropped/"):
                dropped[key.removeprefix("pipeline/groups_dropped/")] += int(value)
    cancelled = sum(int(row.get("pipeline/groups_cancelled", 0)) for row in history)
    return {
        "case": case.label,
        "trained steps": f"{len(calls)}/{len(history)}",
        "fill s": first_end - started,
        "steps/h": (len(calls) - 1) * 3600 / window if window > 0 else nan,
        "trainer idle": 1 - training / window if window > 0 else nan,
        "worker idle": 1 - rolling / (args.slots * window) if window > 0 else nan,
        "LLM idle": 1 - served / (args.slots * window) if window > 0 else nan,
        "staleness mean": statistics.fmean(staleness) if staleness else nan,
        "staleness max": max(staleness, default=0),
        "dropped": ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) or "-",
        "cancelled": cancelled,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    def cell(key: str, value: Any) -> str:
        if key.endswith("idle"):
            return f"{100 * value:.1f}%"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(cell(k, v) for k, v in row.items()) + " |")


def report_target(rows: list[dict[str, Any]], k: int) -> None:
    by_case = {row["case"]: row for row in rows}
    target = by_case.get(f"S=2 K={k} available")
    baseline = by_case.get("S=0 K=0 available")
    if target is None or baseline is None:
        return
    ratio = target["steps/h"] / baseline["steps/h"]
    print(
        f"target (S=2 K={k} available vs S=0 K=0 available): trainer idle "
        f"{100 * target['trainer idle']:.1f}% (target < 10%), steps/h x{ratio:.2f} (target >= 2)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8, help="training steps per case")
    parser.add_argument("--groups-per-step", type=int, default=4)
    parser.add_argument("--rollouts-per-group", type=int, default=4)
    parser.add_argument("--turns", type=int, default=4, help="--max-steps: turns per rollout")
    parser.add_argument("--s", default="0,1,2", help="--max-steps-off-policy values")
    parser.add_argument("--over-provision", type=int, help="K; default groups_per_step / 2")
    parser.add_argument(
        "--modes", default="available,asleep", help="inference during train(): available, asleep"
    )
    parser.add_argument("--slots", type=int, help="rollout slots; default (G + K) x rollouts")
    parser.add_argument("--median-s", type=float, default=0.075, help="median LLM request delay")
    parser.add_argument("--p99-ratio", type=float, default=10.0, help="p99 / median of the delay")
    parser.add_argument("--train-s", type=float, default=1.0, help="simulated train() time")
    parser.add_argument("--seed", type=int, default=0, help="seed of the delays and the script")
    parser.add_argument("--drop-zero-variance", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the logs and ART directories")
    args = parser.parse_args(argv)
    if args.over_provision is None:
        args.over_provision = max(1, args.groups_per_step // 2)
    if args.slots is None:
        args.slots = (args.groups_per_step + args.over_provision) * args.rollouts_per_group
    if args.slots % args.rollouts_per_group:
        parser.error("--slots must be a multiple of --rollouts-per-group (one job per worker)")
    return args


def main() -> None:
    args = parse_args()
    os.chdir(ROOT)  # the local workers run `python -m rollout_workers` from here
    modes = [m.strip() for m in args.modes.split(",")]
    cases = [
        Case(int(s), k, mode == "asleep")
        for mode in modes
        for s in args.s.split(",")
        for k in (0, args.over_provision)
    ]
    os.environ[TRAIN_S_ENV] = str(args.train_s)
    os.environ[GATEWAY_TOKEN_ENV] = GATEWAY_TOKEN
    workdir = Path(tempfile.mkdtemp(prefix="async-utilization-"))
    redis, redis_url = start_redis_server(workdir / "redis", appendonly=False)
    rows: list[dict[str, Any]] = []
    setup_logging()
    log = open(workdir / "trainer.log", "a")  # noqa: SIM115 (closed below)
    logging.getLogger().handlers[0].setStream(log)  # type: ignore[attr-defined]
    failed, workers = True, None
    try:
        workers = Workers(args.slots // args.rollouts_per_group, redis_url, workdir / "workers.log")
        delay = lognormal_delay(args.median_s, args.p99_ratio)
        with ScriptedLLM(delay_fn=delay, seed=args.seed) as llm:
            for case in cases:
                print(f"running {case.label} ...", flush=True)
                rows.append(run_case(args, case, llm, workers, workdir))
        failed = False
    finally:
        if workers is not None:
            workers.stop()
        log.close()
        redis.terminate()
        redis.wait(10)
        if failed or args.keep:
            print(f"logs and ART directories kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{args.steps} steps x {args.groups_per_step} groups x {args.rollouts_per_group} "
        f"rollouts (<= {args.turns} turns); {args.slots} rollout slots "
        f"({args.slots // args.rollouts_per_group} workers); LLM delay lognormal, median "
        f"{args.median_s * 1000:.0f} ms, p99 {args.p99_ratio:g}x; train() {args.train_s:g} s; "
        f"zero-variance groups {'dropped' if args.drop_zero_variance else 'kept'}"
    )
    print_table(rows)
    report_target(rows, args.over_provision)


if __name__ == "__main__":
    main()
