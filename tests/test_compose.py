"""compose.yaml for real: the project image, docker-compose, three scaled workers, two training
steps with the CPU stand-ins, rq-dashboard, and a worker stopped mid-step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from redis import Redis
from rq import Queue, Worker
from rq.registry import FinishedJobRegistry

from common.queue import SERIALIZER
from tests.conftest import REQUIRE_DOCKER_ENV, ROOT, free_port, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.compose]

IMAGE = "rlm-grpo:test"
HELD = 6  # requests the LLM holds: every rollout of step 0
PROJECT_BASE_PACKAGES = (
    "python3,python3-venv,git,bubblewrap,patch,docker.io,ca-certificates,redis-server"
)


@pytest.fixture(scope="module")
def project_image(docker_engine: None) -> str:
    if shutil.which("docker-compose") is None:
        if os.environ.get(REQUIRE_DOCKER_ENV) == "1":
            pytest.fail("docker-compose is not installed (apt-get install docker-compose)")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    base = [
        "bash",
        "docker/build_base_image.sh",
        "rlm-project-base:bookworm",
        PROJECT_BASE_PACKAGES,
    ]
    subprocess.run(base, cwd=ROOT, check=True)
    subprocess.run(["bash", "docker/download_wheels.sh"], cwd=ROOT, check=True)
    subprocess.run(["docker", "build", "-q", "-t", IMAGE, "."], cwd=ROOT, check=True)
    return IMAGE


class Compose:
    """docker-compose on compose.yaml + the test override, merged by docker-compose itself.

    Compose merges port and device lists instead of replacing them, and host networking refuses
    published ports: the merged file drops them (and the GPU reservation: CPU profile)."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.project = f"rlmtest{uuid.uuid4().hex[:8]}"
        self.env = {**os.environ, **env}
        merged = self._run("-f", "compose.yaml", "-f", "tests/compose/compose.test.yaml", "config")
        config = yaml.safe_load(merged.stdout)
        for service in config["services"].values():
            if service.get("network_mode") == "host":
                service.pop("ports", None)
            service.pop("deploy", None)
        self.file = workdir / "compose.merged.yaml"
        self.file.write_text(yaml.safe_dump(config))

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run("-f", str(self.file), "--project-directory", str(ROOT), *args, check=check)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = ["docker-compose", "-p", self.project, *args]
        return subprocess.run(
            command, cwd=ROOT, env=self.env, capture_output=True, text=True, check=check
        )

    def containers(self, service: str) -> list[str]:
        return self("ps", "-q", service).stdout.split()


@pytest.fixture
def compose(project_image: str, tmp_path: Path) -> Iterator[tuple[Compose, dict[str, str]]]:
    env_file = tmp_path / ".env"
    password = uuid.uuid4().hex
    grader_token, gateway_token = uuid.uuid4().hex, uuid.uuid4().hex
    env_file.write_text(
        f"REDIS_PASSWORD={password}\nGRADER_TOKEN={grader_token}\nGATEWAY_TOKEN={gateway_token}\n"
    )
    art = tmp_path / "art"
    art.mkdir()
    env = {
        "ENV_FILE": str(env_file), "RLM_IMAGE": project_image, "TEST_ART_DIR": str(art),
        "REDIS_PASSWORD": password, "GRADER_TOKEN": grader_token, "GATEWAY_TOKEN": gateway_token,
        "REDIS_PORT": str(free_port()), "LLM_PORT": str(free_port()),
        "DASHBOARD_PORT": str(free_port()), "GRADER_PORT": str(free_port()), "LLM_DELAY_S": "0",
        "LLM_HOLD": str(HELD),
        "TRAINER_ARGS": "--groups-per-step 3 --rollouts-per-group 2 --max-concurrent 6 "
                        "--num-epochs 1 --dataset-size 6 --max-steps 4",
    }  # fmt: skip
    runner = Compose(env, tmp_path)
    try:
        yield runner, env
    finally:
        logs = runner("logs", "--no-color", "--tail", "40", check=False).stdout
        runner("down", "-v", "--timeout", "10", check=False)
        (tmp_path / "compose.log").write_text(logs)


def test_compose_runs_training_with_scaled_workers_and_survives_a_stopped_worker(compose) -> None:
    runner, env = compose
    runner("up", "-d", "--scale", "rollout-worker=3")
    redis = Redis(host="127.0.0.1", port=int(env["REDIS_PORT"]), password=env["REDIS_PASSWORD"])
    art = Path(env["TEST_ART_DIR"]) / "rlm-training" / "models" / "r2e-rlm-qwen3-14b-default"

    wait_for(lambda: len(Worker.all(connection=redis)) == 3, 60, "three workers registered")
    for service in ("redis", "rq-dashboard", "rollout-worker", "trainer"):
        for container in runner.containers(service):  # every process's command line, as ps
            top = subprocess.run(["docker", "top", container], capture_output=True, text=True)
            assert top.returncode == 0 and env["REDIS_PASSWORD"] not in top.stdout, top.stdout
    assert httpx.get(f"http://127.0.0.1:{env['DASHBOARD_PORT']}/", timeout=10).status_code == 200

    # The LLM holds the first 6 requests: step 0's 3 groups of 2 rollouts, one job per worker
    # (a worker runs one job at a time), so all three workers are provably mid-job.
    llm = f"http://127.0.0.1:{env['LLM_PORT']}/_control"
    wait_for(lambda: _held(llm) == HELD, 120, "every step-0 rollout held mid-request")
    busy = {w.name: w.get_current_job_id() for w in Worker.all(connection=redis)}
    assert len(busy) == 3 and None not in busy.values(), busy
    victim = runner.containers("rollout-worker")[0]
    stopped = subprocess.run(["docker", "stop", "-t", "30", victim], capture_output=True, text=True)
    assert stopped.returncode == 0
    # Its job went back to the queue at once (the other two are still held): requeued by the
    # stopped worker itself, which left; the two others still run theirs.
    queued = Queue("rollouts", connection=redis, serializer=SERIALIZER).job_ids
    running = {w.get_current_job_id() for w in Worker.all(connection=redis)}
    assert len(queued) == 1 and queued[0] in busy.values(), (queued, busy)
    assert running == set(busy.values()) - set(queued), running
    assert httpx.post(f"{llm}/release", timeout=10).status_code == 200

    trainer = runner.containers("trainer")[0]
    exit_code = subprocess.run(
        ["docker", "wait", trainer], capture_output=True, text=True, timeout=240
    )
    assert exit_code.stdout.strip() == "0", runner("logs", "--no-color", "trainer").stdout[-3000:]
    calls = [json.loads(line) for line in (art / "train_calls.jsonl").read_text().splitlines()]
    assert [c["step"] for c in calls] == [1, 2]
    for call in calls:
        assert len(call["groups"]) == 3 and all(g["size"] == 2 for g in call["groups"])
    assert len(Worker.all(connection=redis)) == 2  # the stopped worker left cleanly

    # rq-dashboard reads the queue and the jobs themselves (it shares the jobs' serializer).
    dashboard = f"http://127.0.0.1:{env['DASHBOARD_PORT']}/0/data"
    queues = httpx.get(f"{dashboard}/queues.json", timeout=10).json()["queues"]
    assert "rollouts" in {q["name"] for q in queues}
    [job_id, *_] = FinishedJobRegistry("rollouts", connection=redis).get_job_ids()
    job = httpx.get(f"{dashboard}/job/{job_id}.json", timeout=10).json()
    assert job["id"] == job_id and "(step " in job["description"], job


def _held(control_url: str) -> int:
    try:
        return int(httpx.get(control_url, timeout=5).json()["held"])
    except httpx.HTTPError:
        return -1  # not up yet


def _state(art: Path) -> dict | None:
    try:
        return json.loads((art / "state.json").read_text()).get("rlm_pipeline")
    except (OSError, ValueError):
        return None
