"""One grading in one fresh container: apply the diff, restore the hidden tests, run them.

The container has no network and bounded CPU, memory, processes and time; it is removed whatever
happens (success, timeout, cancellation, error). Engine-side failures raise `GradingFailure`
with a type the HTTP layer maps to a status code; test outcomes are data, never exceptions.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass

from common.errors import GraderError

# Inside the container: the diff arrives on stdin; markers on stdout tell the grader what happened.
_SCRIPT = r"""
cd /testbed || { echo "@@RLM no_testbed"; exit 97; }
cat > /tmp/agent.diff
if [ -s /tmp/agent.diff ]; then
    if ! git apply --whitespace=nowarn /tmp/agent.diff 2>/tmp/apply.err; then
        echo "@@RLM patch_failed"; cat /tmp/apply.err; exit 90
    fi
fi
rm -rf /testbed/r2e_tests && cp -r /r2e_tests /testbed/r2e_tests
start=$(date +%s.%N)
timeout -s KILL {timeout} bash run_tests.sh > /tmp/tests.log 2>&1
code=$?
end=$(date +%s.%N)
cat /tmp/tests.log
echo "@@RLM done exit=$code start=$start end=$end"
"""
_DONE = re.compile(r"@@RLM done exit=(\d+) start=([\d.]+) end=([\d.]+)")


class GradingFailure(GraderError):
    """The grading could not run: image missing, patch not applicable, engine error."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ContainerLimits:
    memory: str = "4g"
    cpus: float = 2.0
    pids: int = 512


@dataclass(frozen=True)
class TestRun:
    log: str
    exit_code: int
    timed_out: bool
    tests_s: float


def run_hidden_tests(
    image: str,
    diff: str,
    timeout_s: float,
    limits: ContainerLimits,
    label: str,
    cancelled: threading.Event,
) -> TestRun:
    name = f"rlm-grade-{uuid.uuid4().hex[:12]}"
    command = [
        "docker", "run", "--rm", "-i", "--name", name, "--label", f"rlm.grader={label}",
        "--network", "none", "--memory", limits.memory, "--memory-swap", limits.memory,
        "--cpus", str(limits.cpus), "--pids-limit", str(limits.pids),
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        image, "bash", "-c", _SCRIPT.replace("{timeout}", str(int(timeout_s))),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # Outer guard: the in-container timeout covers the tests; this covers everything else.
    deadline = time.monotonic() + timeout_s + 120
    outputs: list[str] = []
    reader = threading.Thread(target=lambda: outputs.extend(process.communicate(diff)), daemon=True)
    try:
        reader.start()
        while reader.is_alive():
            reader.join(0.2)
            if cancelled.is_set():
                raise GradingFailure("cancelled", "the client went away; grading stopped")
            if time.monotonic() > deadline:
                raise GradingFailure("engine_error", f"container {name} did not finish in time")
        stdout, stderr = outputs
    finally:
        if process.poll() is None or cancelled.is_set():
            remove_container(name)
        process.wait()
    return _interpret(stdout, stderr, process.returncode, image)


def _interpret(stdout: str, stderr: str, returncode: int, image: str) -> TestRun:
    done = _DONE.search(stdout)
    if done:
        code, start, end = int(done.group(1)), float(done.group(2)), float(done.group(3))
        log = stdout[: done.start()]
        # 137: `timeout -s KILL` fired (or the tests were OOM-killed): a model outcome.
        return TestRun(log, code, timed_out=code == 137, tests_s=end - start)
    if "@@RLM patch_failed" in stdout:
        detail = stdout.split("@@RLM patch_failed", 1)[1].strip()[-1000:]
        raise GradingFailure("patch_failed", f"the diff does not apply: {detail}")
    if "@@RLM no_testbed" in stdout:
        raise GradingFailure("engine_error", f"{image} has no /testbed: is it an R2E-Gym image?")
    if (
        "No such image" in stderr
        or "Unable to find image" in stderr
        or "pull access denied" in stderr
    ):
        raise GradingFailure(
            "image_missing", f"image {image} is not on this Docker engine: pull it first"
        )
    raise GradingFailure(
        "engine_error", f"docker run exited {returncode}: {stderr.strip()[-1000:]}"
    )


def remove_container(name: str) -> None:
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def remove_leftovers(label: str) -> int:
    """Remove containers an earlier grader with this label left behind (it crashed)."""
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=rlm.grader={label}"],
        capture_output=True,
        text=True,
    )
    ids = listed.stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    return len(ids)


def engine_available() -> str | None:
    """None when the Docker engine answers, else why not."""
    try:
        result = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if result.returncode == 0 else result.stderr.strip()[-500:]
