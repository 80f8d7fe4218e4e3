"""Soak the pipeline under random faults: N training steps with faults drawn at random from the
fault suite's list, injected at random moments, with real processes (Redis with append-only on,
RQ workers, the trainer) and the CPU stand-ins (scripted LLM, recording backend).

Faults: worker SIGKILL, worker frozen past its lease then resumed, a job dequeued by a worker
that dies before starting it, trainer SIGKILL (restarted with the same flags), Redis crash and
restart, a result entry lost before delivery, a malformed result, the policy answering `abort`,
HTTP 500 or hanging.

Prints the faults injected by kind, steps trained, groups dropped by reason, rollouts rerun, the
longest step, Redis memory at start and end, and the rollouts lost (must be 0); exits 1 if any
was lost or a step was trained twice.

    uv run python benchmarks/fault_soak.py [--steps 40] [--seed 0] [--every-s 3] [--off-policy 2]

`--off-policy S` runs the trainer with `--max-steps-off-policy S` (asynchronous training).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from redis import Redis
from redis.exceptions import RedisError
from rq import Worker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from common import keys  # noqa: E402
from common.queue import SERIALIZER, rollout_queue  # noqa: E402
from tests.dataset import write_r2e_jsonl  # noqa: E402
from tests.fakes.scripted_llm import ScriptedLLM  # noqa: E402
from trainer.services import start_redis_server  # noqa: E402

GROUPS, ROLLOUTS, WORKERS = 2, 3, 3
FAULTS = (
    "worker_sigkill",
    "worker_frozen",
    "dequeued_not_started",
    "trainer_sigkill",
    "redis_restart",
    "result_lost",
    "malformed_result",
    "policy_abort",
    "policy_500",
    "policy_hang",
)


class Soak:
    def __init__(self, workdir: Path, steps: int, seed: int, off_policy: int = 0) -> None:
        self.workdir = workdir
        self.off_policy = off_policy
        self.rng = random.Random(seed)
        self.dataset = write_r2e_jsonl(workdir / "r2e.jsonl", rows=steps * GROUPS)
        self.art = workdir / "art"
        self.steps = steps
        self.server, self.url = start_redis_server(workdir / "redis", appendonly=True)
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        self.redis = Redis.from_url(self.url)
        self.memory_start = self._memory()
        self.memory_end = float("nan")
        self.llm = ScriptedLLM(delay_s=0.05).__enter__()
        self.workers: list[subprocess.Popen] = []
        self.trainer: subprocess.Popen | None = None
        self.injected: collections.Counter[str] = collections.Counter()
        self.restarts_after_refusal = 0
        self._logs = open(workdir / "processes.log", "w")  # noqa: SIM115

    def run(self, every_s: float) -> int:
        self.workers = [self._worker(i) for i in range(WORKERS)]
        self.trainer = self._trainer()
        next_fault = time.monotonic() + self.rng.uniform(0.5, 2 * every_s)
        while True:
            code = self.trainer.poll()
            if code == 0:
                return 0
            if code == 2 and self.restarts_after_refusal < 5:
                # Redis went down while the trainer started (it refuses an unreachable Redis at
                # start): a supervisor starts it again, as after any crash.
                self.restarts_after_refusal += 1
                self.trainer = self._trainer()
                continue
            if code is not None:
                print(f"trainer exited with {code}; see {self._logs.name}")
                return code
            self.workers = [w if w.poll() is None else self._replace(w) for w in self.workers]
            if time.monotonic() >= next_fault:
                kind = self.rng.choice(FAULTS)
                if self.inject(kind):
                    self.injected[kind] += 1
                next_fault = time.monotonic() + self.rng.uniform(0.5, 2 * every_s)
            time.sleep(0.1)

    def inject(self, kind: str) -> bool:
        """Inject one fault now; False when it could not be (nothing busy, no stream yet)."""
        try:
            return getattr(self, kind)()
        except (RedisError, psutil.Error, OSError, ValueError):
            return False

    def worker_sigkill(self) -> bool:
        busy = self._busy_worker()
        if busy is None:
            return False
        busy.kill()
        return True

    def worker_frozen(self) -> bool:
        busy = self._busy_worker()
        if busy is None:
            return False
        busy.suspend()
        time.sleep(self.rng.uniform(3, 6))  # past its 2 s lease
        busy.resume()
        return True

    def dequeued_not_started(self) -> bool:
        queue = rollout_queue("rollouts", self.redis)
        return (
            self.redis.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT") is not None
        )

    def trainer_sigkill(self) -> bool:
        self.trainer.kill()
        self.trainer.wait()
        self.trainer = self._trainer()
        return True

    def redis_restart(self) -> bool:
        self.server.kill()
        self.server.wait()
        time.sleep(self.rng.uniform(0.5, 3))
        self.server, _ = start_redis_server(self.workdir / "redis", appendonly=True, port=self.port)
        return True

    def result_lost(self) -> bool:
        stream = self._stream()
        if stream is None:
            return False
        reply = self.redis.xreadgroup(
            keys.TRAINER_GROUP, "thief", {stream: ">"}, count=1, block=3000
        )
        for entry_id, _fields in reply[0][1] if reply else []:
            self.redis.xack(stream, keys.TRAINER_GROUP, entry_id)
            self.redis.xdel(stream, entry_id)
            return True
        return False

    def malformed_result(self) -> bool:
        stream = self._stream()
        if stream is None:
            return False
        self.redis.xadd(stream, {"data": b"\xc1 not msgpack"})
        return True

    def policy_abort(self) -> bool:
        self.llm.inject("abort", self.rng.randint(1, 3))
        return True

    def policy_500(self) -> bool:
        self.llm.inject("http_500", self.rng.randint(1, 3))
        return True

    def policy_hang(self) -> bool:
        self.llm.inject("hang")
        return True

    def report(self, seconds: float) -> bool:
        history = self._read_jsonl(
            self.art / "rlm-training/models/r2e-rlm-qwen3-14b-default/history.jsonl"
        )
        rows = [h for h in history if "pipeline/groups_dropped" in h]
        calls = self._read_jsonl(
            self.art / "rlm-training/models/r2e-rlm-qwen3-14b-default/train_calls.jsonl"
        )
        dropped: collections.Counter[str] = collections.Counter()
        for row in rows:
            for key, value in row.items():
                if key.startswith("pipeline/groups_dropped/"):
                    dropped[key.removeprefix("pipeline/groups_dropped/")] += int(value)
        # Every group started is trained, dropped, cancelled (too stale) or, when the run ends,
        # left unsettled (asynchronous mode's groups still running are cancelled then).
        accounted = sum(
            r["pipeline/groups_trained"] + r["pipeline/groups_dropped"]
            + r.get("pipeline/groups_cancelled", 0)
            for r in rows
        )  # fmt: skip
        state = self._read_json(
            self.art / "rlm-training/models/r2e-rlm-qwen3-14b-default/state.json"
        ).get("rlm_pipeline", {})
        unsettled = (
            state.get("admitted", 0) - state.get("settled_below", 0) - len(state.get("settled", []))
        )
        lost = (self.steps * GROUPS - int(accounted) - unsettled) * ROLLOUTS
        trained_steps = [c["step"] for c in calls]
        once = trained_steps == list(range(1, len(trained_steps) + 1))
        longest = max(
            (r.get("pipeline/step_wait_s", 0) + r.get("pipeline/step_train_s", 0) for r in rows),
            default=0,
        )
        lines = [
            f"| steps | {self.steps} ({len(rows)} logged, {len(calls)} trained, each once: {once}) |",
            f"| wall time | {seconds:.0f} s |",
            "| faults injected | "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.injected.items()))
            + f" (total {sum(self.injected.values())}) |",
            "| groups dropped | "
            + (", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) or "0")
            + " |",
            f"| rollouts rerun | {int(sum(r.get('pipeline/rerun_rollouts', 0) for r in rows))} |",
            f"| jobs requeued | {int(sum(r.get('pipeline/requeued_jobs', 0) for r in rows))} |",
            f"| dead letters | {int(sum(r.get('pipeline/dead_letters', 0) for r in rows))} |",
            f"| groups cancelled, unsettled at the end | "
            f"{int(sum(r.get('pipeline/groups_cancelled', 0) for r in rows))}, {unsettled} |",
            f"| longest step | {longest:.1f} s |",
            f"| Redis memory | {self.memory_start:.1f} MB at start, {self.memory_end:.1f} MB at end |",
            f"| trainer restarts after a refused start | {self.restarts_after_refusal} |",
            f"| rollouts lost | {lost} |",
        ]
        print("| | |\n|---|---|\n" + "\n".join(lines))
        return lost == 0 and once and len(rows) == self.steps

    def close(self) -> None:
        for process in [*self.workers, self.trainer]:
            if process is not None and process.poll() is None:
                psutil.Process(process.pid).resume()
                process.kill()
                process.wait()
        self.llm.__exit__(None, None, None)
        self.server.kill()
        self.server.wait()

    def _trainer(self) -> subprocess.Popen:
        args = {
            "backend": "tests.fakes.recording_backend:create", "vllm-url": self.llm.url,
            "redis-url": self.url, "dataset": str(self.dataset), "art-path": str(self.art),
            "groups-per-step": GROUPS, "rollouts-per-group": ROLLOUTS, "max-concurrent": 6,
            "num-epochs": 1, "max-steps": 3, "lease-ttl-s": 2, "rollout-deadline-s": 15,
            "request-timeout-s": 3, "retry-backoff-s": 0.05, "rollout-retries": 3,
            "grader": "none", "reward-fn": "common.rewards:finished_reward",
            "max-steps-off-policy": self.off_policy,
        }  # fmt: skip
        # Toy rewards tie often: every group counts, so none is lost to the zero-variance rule.
        command_flags = ["--keep-zero-variance"]
        command = [sys.executable, "-m", "trainer", "--no-wandb", *command_flags]
        for flag, value in args.items():
            command += [f"--{flag}", str(value)]
        return subprocess.Popen(command, cwd=ROOT, stdout=self._logs, stderr=subprocess.STDOUT)

    def _worker(self, index: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "rollout_workers", "--redis-url", self.url,
             "--worker-name", f"soak-{index}-{time.monotonic_ns()}"],
            cwd=ROOT, stdout=self._logs, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def _replace(self, worker: subprocess.Popen) -> subprocess.Popen:
        return self._worker(self.workers.index(worker))

    def _busy_worker(self) -> psutil.Process | None:
        ours = {w.pid for w in self.workers}
        for worker in Worker.all(connection=self.redis, serializer=SERIALIZER):
            if worker.get_current_job_id() and worker.pid in ours:
                return psutil.Process(worker.pid)
        return None

    def _stream(self) -> str | None:
        state = self._read_json(
            self.art / "rlm-training/models/r2e-rlm-qwen3-14b-default/state.json"
        )
        run_key = (state.get("rlm_pipeline") or {}).get("run_key")
        return keys.results_stream(run_key) if run_key else None

    def _memory(self) -> float:
        return float(self.redis.info("memory")["used_memory"]) / 1e6

    @staticmethod
    def _read_jsonl(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    @staticmethod
    def _read_json(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every-s", type=float, default=3.0, help="mean seconds between faults")
    parser.add_argument("--off-policy", type=int, default=0, help="--max-steps-off-policy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fault-soak-") as tmp:
        soak = Soak(Path(tmp), args.steps, args.seed, args.off_policy)
        started = time.monotonic()
        try:
            code = soak.run(args.every_s)
            soak.memory_end = soak._memory()
        finally:
            soak.close()
        ok = soak.report(time.monotonic() - started)
        if code != 0:
            print((Path(tmp) / "processes.log").read_text()[-5000:])
    return 0 if ok and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
