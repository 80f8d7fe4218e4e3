"""Shared fixtures: a private Redis per test session (emptied for every test), the scripted LLM,
a toy dataset, and helpers that start workers and trainers as real processes.

Every test runs with a clean environment (no W&B variables from the shell, nothing a test or the
code under test set in-process leaks into the next) and, where torch is installed, with the
recording backend judging trainability through ART's tokenizer. The session's temporary files
all go to one directory (TMPDIR, inherited by every process the tests start); what is left there
at the end is listed (and fails the run under RLM_FAIL_ON_LEFTOVERS=1), then removed unless a
test failed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from redis import Redis

os.environ.setdefault(
    "LITELLM_LOCAL_MODEL_COST_MAP", "True"
)  # litellm (via art): no network on import

from tests.dataset import write_r2e_jsonl
from tests.fakes.recording_backend import TOKENIZE_ENV
from tests.fakes.scripted_llm import ScriptedLLM
from tests.tokenizer import REQUIRE_TORCH_ENV
from trainer.services import free_port, start_redis_server

ROOT = Path(__file__).resolve().parent.parent
FAIL_ON_LEFTOVERS_ENV = "RLM_FAIL_ON_LEFTOVERS"  # CI: temporary files a run leaves fail it

# One temporary directory for the whole session, for this process and every one it starts.
# World-writable and sticky like /tmp: sandboxes run as uids of their own.
SESSION_TMP = Path(tempfile.mkdtemp(prefix="rlm-tests-"))
SESSION_TMP.chmod(0o1777)
os.environ["TMPDIR"] = str(SESSION_TMP)
tempfile.tempdir = str(SESSION_TMP)
_REMOVE_AFTER_TEST: list[Path] = []


def remove_after_test(path: Path) -> Path:
    """`path` (a directory a helper made) is removed when the current test ends."""
    _REMOVE_AFTER_TEST.append(path)
    return path


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("WANDB_")]:
        monkeypatch.delenv(name)  # an API key from the shell would send test runs online
    if importlib.util.find_spec("torch") or os.environ.get(REQUIRE_TORCH_ENV) == "1":
        monkeypatch.setenv(TOKENIZE_ENV, "1")
    yield
    os.environ.clear()  # what the code under test set in-process (WANDB_MODE...) goes too
    os.environ.update(saved)
    while _REMOVE_AFTER_TEST:
        shutil.rmtree(_REMOVE_AFTER_TEST.pop(), ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # pytest's own tmp_path folders live in pytest-of-<user>: they go with the directory.
    left = sorted(p.name for p in SESSION_TMP.iterdir() if not p.name.startswith("pytest-of-"))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if left:
        message = f"{len(left)} temporary files left by the tests in {SESSION_TMP}: {left[:20]}"
        if reporter is not None:
            reporter.write_line(f"WARNING: {message}", yellow=True)
        if os.environ.get(FAIL_ON_LEFTOVERS_ENV) == "1" and exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if exitstatus == 0:
        shutil.rmtree(SESSION_TMP, ignore_errors=True)
    elif reporter is not None:
        reporter.write_line(f"temporary files of this run kept for inspection in {SESSION_TMP}")


def wait_for(
    predicate: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.05
) -> Any:
    """Poll until predicate() is truthy; fail the test naming what never happened."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def descendants() -> set[int]:
    """Pids of every process below this one (to compare before and after a run)."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def assert_nothing_left_running(before: set[int], after_what: str, grace_s: float = 10.0) -> None:
    """Every process started since `before` has exited (or does within `grace_s`: one that
    was signalled may still be on its way out); fail naming what is left."""
    new = []
    for pid in descendants() - before:
        with contextlib.suppress(psutil.NoSuchProcess):
            new.append(psutil.Process(pid))
    _, alive = psutil.wait_procs(new, timeout=grace_s)
    described = []
    for process in alive:
        with contextlib.suppress(psutil.Error):
            described.append(f"{process.pid} {process.status()} {' '.join(process.cmdline())}")
    assert not described, f"processes left running after {after_what}: {described}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    process, url = start_redis_server(tmp_path_factory.mktemp("redis"), appendonly=False)
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    connection = Redis.from_url(redis_server)
    connection.flushall()
    yield redis_server
    connection.flushall()


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_r2e_jsonl(tmp_path / "r2e.jsonl", rows=6)


class Processes:
    """Processes a test started; every one is stopped, by its pid, at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen] = []

    def worker(
        self, redis_url: str, name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        return self._spawn(
            [
                sys.executable,
                "-m",
                "rollout_workers",
                "--redis-url",
                redis_url,
                "--worker-name",
                name,
            ],
            f"worker-{name}",
            env,
        )

    def trainer(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        return self._spawn([sys.executable, "-m", "trainer", *args], "trainer", env)

    def _spawn(
        self, command: list[str], log_name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        log = open(self.tmp_path / f"{log_name}-{len(self.started)}.log", "w")  # noqa: SIM115
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.started.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.tmp_path.glob("*.log"))
        )

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(10)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    tracker = Processes(tmp_path)
    yield tracker
    tracker.stop_all()


def trainer_args(
    redis_url: str, llm_url: str, dataset: Path, art_path: Path, **overrides: Any
) -> list[str]:
    values: dict[str, Any] = {
        "backend": "tests.fakes.recording_backend:create",
        "vllm_url": llm_url,
        "redis_url": redis_url,
        "dataset": str(dataset),
        "art_path": str(art_path),
        "groups_per_step": 2,
        "rollouts_per_group": 3,
        "max_concurrent": 6,
        "num_epochs": 1,
        "dataset_size": 4,  # 4 scenarios / 2 groups per step = 2 steps
        "max_steps": 4,
        "lease_ttl_s": 3,
        "retry_backoff_s": 0.05,
        "health_check_interval": 30,
        "grader": "none",  # smoke runs: the Docker grader has tests of its own
        "reward_fn": "common.rewards:finished_reward",
        # The scripted agent's rewards often tie: plumbing tests train every group (the drop
        # of zero-variance groups is tested on its own).
        "keep_zero_variance": True,
        # Every reply posted ahead of its result (the scripted ones are short): the pipeline
        # and fault tests run the protocol with replies in flight.
        "post_replies_over_tokens": 0,
    }
    values.update(overrides)
    args = [] if values.pop("wandb_offline", False) else ["--no-wandb"]
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


def model_dir(art_path: Path, experiment: str = "default") -> Path:
    """The ART model directory of an experiment: `<model_name>-<experiment_name>`."""
    return art_path / "rlm-training" / "models" / f"r2e-rlm-qwen3-14b-{experiment}"


def train_calls(art_path: Path, experiment: str = "default") -> list[dict[str, Any]]:
    path = model_dir(art_path, experiment) / "train_calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def history(art_path: Path, experiment: str = "default") -> list[dict[str, Any]]:
    path = model_dir(art_path, experiment) / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def pipeline_state(art_path: Path, experiment: str = "default") -> dict[str, Any] | None:
    path = model_dir(art_path, experiment) / "state.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text()).get("rlm_pipeline")
    except ValueError:
        return None  # being written


# --- Docker: the grader's tests run against the real engine -------------------------------

REQUIRE_DOCKER_ENV = "RLM_REQUIRE_DOCKER"  # set by CI: a missing engine fails instead of skipping
GRADER_TEST_TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="session")
def docker_engine() -> None:
    from grader.container import engine_available

    problem = engine_available()
    if problem is None:
        return
    if os.environ.get(REQUIRE_DOCKER_ENV) == "1":
        pytest.fail(f"{REQUIRE_DOCKER_ENV}=1 but no Docker engine answers: {problem}")
    pytest.skip(f"no Docker engine answers ({problem}); .ci/run starts one")


@pytest.fixture(scope="session")
def fixture_tasks(docker_engine: None, tmp_path_factory: pytest.TempPathFactory):
    """The fixture tasks built for real: (dataset parquet path, [BuiltTask])."""
    from tests.tasks.build import build_all

    subprocess.run(["bash", str(ROOT / "docker" / "build_base_image.sh")], check=True)
    return build_all(tmp_path_factory.mktemp("r2e-fixtures"))


@pytest.fixture(scope="session")
def grader_service(fixture_tasks, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m grader` on a free port, two gradings at once; yields its URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("grader") / "grader.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "grader", "--host", "127.0.0.1", "--port", str(port),
             "--max-concurrent", "2", "--label", f"test-{port}"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "GRADER_TOKEN": GRADER_TEST_TOKEN},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        import httpx

        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None and pytest.fail(log_path.read_text())

    wait_for(healthy, 30, "the grader to answer /health")
    yield url
    process.terminate()
    process.wait(30)


def grader_containers(label: str) -> list[str]:
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=rlm.grader={label}"],
        capture_output=True,
        text=True,
    )
    return listed.stdout.split()


@pytest.fixture(scope="session")
def repo_cache(fixture_tasks, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture tasks' repo cache, filled once per session."""
    from producer.repo_cache import fill_cache

    dataset, _ = fixture_tasks
    cache = tmp_path_factory.mktemp("repo-cache")
    fill_cache(str(dataset), "train", cache)
    return cache
