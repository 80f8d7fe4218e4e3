"""A grading container runs with no network and bounded CPU, memory and processes: read from the
engine itself (`docker inspect`) while a grading is running, then seen from inside."""

from __future__ import annotations

import json
import socket
import subprocess
from urllib.parse import urlparse

import pytest

from grader.container import ContainerLimits
from tests.conftest import grader_containers, wait_for
from tests.test_grader import HANG, label_of, request_for, send_grade

pytestmark = pytest.mark.docker

PROBE = (
    "import socket\n"
    "try:\n"
    "    socket.create_connection(('1.1.1.1', 53), timeout=3)\n"
    "    print('NET connected')\n"
    "except OSError as e:\n"
    "    print('NET', type(e).__name__)\n"
    "print('IFACES', sorted(n for _, n in socket.if_nameindex()))\n"
)


def test_a_grading_container_has_no_network_and_bounded_resources(
    fixture_tasks, grader_service
) -> None:
    _, tasks = fixture_tasks
    body = request_for(tasks[0], HANG, timeout_s=600).model_dump_json().encode()
    port = urlparse(grader_service).port
    label = label_of(grader_service)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        send_grade(sock, body)
        [container] = wait_for(lambda: grader_containers(label), 30, "the grading container")
        inspected = subprocess.run(
            ["docker", "inspect", container], capture_output=True, text=True, check=True
        )
        host = json.loads(inspected.stdout)[0]["HostConfig"]
        inside = subprocess.run(
            ["docker", "exec", container, "python3", "-c", PROBE],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    wait_for(lambda: not grader_containers(label), 30, "the container's removal")

    limits = ContainerLimits()
    assert host["NetworkMode"] == "none"
    assert host["Memory"] == 4 << 30 and limits.memory == "4g"
    assert host["MemorySwap"] == host["Memory"], "no swap beyond the memory limit"
    assert host["NanoCpus"] == int(limits.cpus * 1e9)
    assert host["PidsLimit"] == limits.pids
    assert inside.returncode == 0, inside.stderr
    assert "NET connected" not in inside.stdout
    assert "IFACES ['lo']" in inside.stdout, inside.stdout
