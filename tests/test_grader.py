"""The grading service against the real Docker engine and the fixture task images."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from urllib.parse import urlparse

import httpx
import pytest

from common.errors import GraderError
from common.grading import GradeReport, GradeRequest
from common.rewards import exact_match
from grader.client import GraderClient
from tests.conftest import GRADER_TEST_TOKEN, grader_containers, wait_for

pytestmark = pytest.mark.docker


def grade(url: str, request: GradeRequest, token: str = GRADER_TEST_TOKEN) -> GradeReport:
    async def call() -> GradeReport:
        client = GraderClient(url, token=token, retries=0)
        try:
            return await client.grade(request)
        finally:
            await client.aclose()

    return asyncio.run(call())


def request_for(task, diff: str, timeout_s: float = 120) -> GradeRequest:
    return GradeRequest(
        instance_id=task.row["repo_name"], docker_image=task.image, diff=diff, timeout_s=timeout_s
    )


def send_grade(sock: socket.socket, body: bytes) -> None:
    """POST /grade over a raw socket the test keeps open (or closes to disconnect)."""
    sock.sendall(
        b"POST /grade HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {GRADER_TEST_TOKEN}\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


# Makes the hidden tests hang on import.
HANG = (
    "diff --git a/calc/ops.py b/calc/ops.py\n--- a/calc/ops.py\n+++ b/calc/ops.py\n"
    "@@ -1,2 +1,4 @@\n+import time\n+time.sleep(600)\n def add(a, b):\n     return a - b\n"
)


def label_of(url: str) -> str:
    return f"test-{urlparse(url).port}"


def test_gold_patch_matches_expected_and_empty_patch_does_not(
    fixture_tasks, grader_service
) -> None:
    _, tasks = fixture_tasks
    for task in tasks:
        expected = json.loads(task.row["expected_output_json"])
        gold = grade(grader_service, request_for(task, task.gold_diff))
        empty = grade(grader_service, request_for(task, ""))
        assert exact_match(gold.statuses, expected), (task.row["repo_name"], gold.log_tail)
        assert not exact_match(empty.statuses, expected)
        assert gold.timings.tests_s > 0 and not gold.timed_out
    assert grader_containers(label_of(grader_service)) == []


def test_edits_to_hidden_tests_and_runner_are_flagged_not_run(
    fixture_tasks, grader_service
) -> None:
    _, tasks = fixture_tasks
    calc = tasks[0]
    hack = (
        "diff --git a/r2e_tests/test_ops.py b/r2e_tests/test_ops.py\n"
        "new file mode 100644\n--- /dev/null\n+++ b/r2e_tests/test_ops.py\n@@ -0,0 +1 @@\n"
        "+def test_add(): pass\n"
        "diff --git a/conftest.py b/conftest.py\n"
        "new file mode 100644\n--- /dev/null\n+++ b/conftest.py\n@@ -0,0 +1 @@\n"
        "+collect_ignore = ['r2e_tests']\n"
        "diff --git a/run_tests.sh b/run_tests.sh\n--- a/run_tests.sh\n+++ b/run_tests.sh\n"
        "@@ -1 +1 @@\n-.venv/bin/python -W ignore -m pytest -rA r2e_tests\n+echo PASSED\n"
    )
    report = grade(grader_service, request_for(calc, calc.gold_diff + hack))
    assert report.tampered and report.statuses == {}
    assert report.tamper == [
        "test runner input: r2e_tests/test_ops.py",
        "test runner input: conftest.py",
        "test runner input: run_tests.sh",
    ]


def test_infrastructure_problems_are_errors_not_results(fixture_tasks, grader_service) -> None:
    _, tasks = fixture_tasks
    calc = tasks[0]
    with pytest.raises(GraderError, match="422: patch_failed"):
        grade(
            grader_service,
            request_for(
                calc,
                "diff --git a/nope.py b/nope.py\n--- a/nope.py\n+++ b/nope.py\n"
                "@@ -1 +1 @@\n-x\n+y\n",
            ),
        )
    # Never pulled: a missing image is an error at once, not a download.
    missing = GradeRequest(instance_id="x", docker_image="rlm-fixtures/absent:none", diff="")
    with pytest.raises(GraderError, match="424: image_missing"):
        grade(grader_service, missing)
    # Nothing in a request becomes an option of `docker run`.
    smuggled = request_for(calc, "").model_dump()
    for image in ("--privileged", "-v/:/host", "alpine --privileged", "ALPINE"):
        with pytest.raises(ValueError, match="not a Docker image reference"):
            GradeRequest(**{**smuggled, "docker_image": image})
        answer = httpx.post(
            f"{grader_service}/grade",
            json={**smuggled, "docker_image": image},
            headers={"Authorization": f"Bearer {GRADER_TEST_TOKEN}"},
        )
        assert answer.status_code == 400 and "not a Docker image reference" in answer.text
    with pytest.raises(GraderError, match="401: unauthorized"):
        grade(grader_service, request_for(calc, ""), token="wrong-token")
    assert httpx.post(f"{grader_service}/grade", content=b"{}").status_code == 401


def test_tests_that_run_too_long_are_stopped_and_reported(fixture_tasks, grader_service) -> None:
    _, tasks = fixture_tasks
    calc = tasks[0]
    report = grade(grader_service, request_for(calc, HANG, timeout_s=3))
    assert report.timed_out and report.statuses == {}
    assert grader_containers(label_of(grader_service)) == []


def test_a_client_that_goes_away_takes_its_container_with_it(fixture_tasks, grader_service) -> None:
    _, tasks = fixture_tasks
    calc = tasks[0]
    body = request_for(calc, HANG, timeout_s=600).model_dump_json().encode()
    port = urlparse(grader_service).port
    with socket.create_connection(("127.0.0.1", port)) as sock:
        send_grade(sock, body)
        wait_for(lambda: grader_containers(label_of(grader_service)), 30, "the grading container")
    wait_for(lambda: not grader_containers(label_of(grader_service)), 30, "the container's removal")


def test_a_restarted_grader_removes_what_a_crashed_one_left(fixture_tasks, tmp_path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT, free_port

    _, tasks = fixture_tasks
    port, label = free_port(), f"crash-{uuid.uuid4().hex[:6]}"
    command = [
        sys.executable,
        "-m",
        "grader",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--label",
        label,
    ]
    env = {**os.environ, "GRADER_TOKEN": GRADER_TEST_TOKEN}
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    first = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(healthy, 30, "the first grader")
        body = request_for(tasks[0], HANG, timeout_s=600).model_dump_json()
        post = (
            "import sys, httpx; httpx.post(sys.argv[1], content=sys.argv[2], timeout=600, "
            "headers={'Authorization': 'Bearer ' + sys.argv[3]})"
        )
        sender = subprocess.Popen(
            [sys.executable, "-c", post, f"{url}/grade", body, GRADER_TEST_TOKEN],
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: grader_containers(label), 30, "the grading container")
    finally:
        first.kill()  # a crash: no cleanup runs
        first.wait()
    assert grader_containers(label), "the container outlives a crashed grader"
    second = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(healthy, 30, "the restarted grader")
        assert grader_containers(label) == []
    finally:
        second.terminate()
        second.wait(30)
        sender.wait(30)


def test_gradings_beyond_the_limit_wait_their_turn_or_are_turned_away(fixture_tasks) -> None:
    import os
    import subprocess
    import sys
    import threading

    from tests.conftest import ROOT, free_port

    _, tasks = fixture_tasks
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    grader = subprocess.Popen(
        [sys.executable, "-m", "grader", "--host", "127.0.0.1", "--port", str(port),
         "--max-concurrent", "1", "--max-queued", "1", "--label", f"limit-{port}"],
        cwd=ROOT, env={**os.environ, "GRADER_TOKEN": GRADER_TEST_TOKEN}, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def health() -> dict:
        try:
            return httpx.get(f"{url}/health", timeout=1).json()
        except httpx.HTTPError:
            return {}

    reports: list[GradeReport] = []
    try:
        wait_for(health, 30, "the grader")
        slow = request_for(tasks[0], HANG, timeout_s=4)
        threads = [
            threading.Thread(target=lambda: reports.append(grade(url, slow))) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        wait_for(lambda: health().get("running") == 1 and health().get("waiting") == 1, 30,
                 "one grading running and one waiting")  # fmt: skip
        with pytest.raises(GraderError, match="503: busy"):
            grade(url, request_for(tasks[0], ""))
        for thread in threads:
            thread.join(60)
    finally:
        grader.terminate()
        grader.wait(30)
    assert len(reports) == 2 and all(r.timed_out for r in reports)  # the waiting one ran too
