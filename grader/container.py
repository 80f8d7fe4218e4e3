"""One grading in one fresh container: check the diff, apply it, restore the test-runner
inputs and the hidden tests, run them so the diff reaches them only through the code under test.

What runs inside is grader/inside/ (grade.sh, check.py, launch.py; see their docstrings). A diff
that tampers with how the tests run is not run at all: it comes back as `tamper` findings, which
score 0. The container has no network and bounded CPU, memory, processes, output and time; it is
removed whatever happens (success, timeout, cancellation, error). Engine-side failures raise
`GradingFailure` with a type the HTTP layer maps to a status code; test outcomes are data.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from common.errors import GraderError
from common.rewards import parse_pytest_log

_INSIDE = Path(__file__).resolve().parent / "inside"
# The frame grade.sh ends its output with; the sections before it are counted from the end.
_FRAME = re.compile(
    rb"\n@@RLM frame status=(\w+) exit=(\d+) start=([\d.]*) end=([\d.]*) "
    rb"log=(\d+) summary=(\d+) tamper=(\d+)\n\Z"
)
# What is kept of the container's output: the frame is at most the log tail (64 KiB), the
# summary (8 MiB) and the findings (64 KiB). Anything before it is dropped as it streams.
MAX_OUTPUT_BYTES = 9 * 1024 * 1024
_MAX_STDERR_BYTES = 64 * 1024


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
    log: str  # the tail of the tests' output (for people: statuses never come from it)
    statuses: dict[str, str]  # from pytest's own summary, as R2E-Gym parses it
    exit_code: int
    timed_out: bool
    tests_s: float
    tamper: list[str] = field(default_factory=list)  # "<reason>: <path>"; empty when honest


def grading_script(timeout_s: float) -> str:
    """grade.sh with check.py and launch.py inside it: the image needs nothing of ours."""
    script = (_INSIDE / "grade.sh").read_text()
    return (
        script.replace("@@TIMEOUT@@", str(int(timeout_s)))
        .replace("@@CHECK@@", (_INSIDE / "check.py").read_text().rstrip("\n"))
        .replace("@@LAUNCH@@", (_INSIDE / "launch.py").read_text().rstrip("\n"))
    )


class _Tail:
    """Drains a pipe, keeping only its last `limit` bytes and counting the rest."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.data = bytearray()
        self.total = 0
        self._stream, self._limit = stream, limit
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while chunk := self._stream.read(65536):
            self.total += len(chunk)
            self.data += chunk
            if len(self.data) > self._limit:
                del self.data[: len(self.data) - self._limit]


def run_hidden_tests(
    image: str,
    diff: str,
    timeout_s: float,
    limits: ContainerLimits,
    label: str,
    cancelled: threading.Event,
) -> TestRun:
    name = f"rlm-grade-{uuid.uuid4().hex[:12]}"
    # Options before the image and `--` before it (the image is also validated in GradeRequest):
    # nothing in the request can become an option of `docker run`. No pull, no log kept by the
    # engine (the output is read once, here, bounded).
    command = [
        "docker", "run", "--rm", "-i", "--pull", "never", "--log-driver", "none",
        "--name", name, "--label", f"rlm.grader={label}",
        "--network", "none", "--memory", limits.memory, "--memory-swap", limits.memory,
        "--cpus", str(limits.cpus), "--pids-limit", str(limits.pids),
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--", image, "bash", "-c", grading_script(timeout_s),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    stdout = _Tail(process.stdout, MAX_OUTPUT_BYTES)
    stderr = _Tail(process.stderr, _MAX_STDERR_BYTES)
    writer = threading.Thread(target=_feed, args=(process.stdin, diff.encode()), daemon=True)
    writer.start()
    # Outer guard: the in-container timeout covers the tests; this covers everything else.
    deadline = time.monotonic() + timeout_s + 120
    try:
        while process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(0.2)
            if cancelled.is_set():
                raise GradingFailure("cancelled", "the client went away; grading stopped")
            if time.monotonic() > deadline:
                raise GradingFailure("engine_error", f"container {name} did not finish in time")
        stdout.thread.join(10)
        stderr.thread.join(10)
    finally:
        if process.poll() is None or cancelled.is_set():
            remove_container(name)
        process.kill()
        process.wait()
    return _interpret(
        bytes(stdout.data), stdout.total, bytes(stderr.data), process.returncode, image
    )


def _feed(stdin: IO[bytes], data: bytes) -> None:
    try:
        stdin.write(data)
        stdin.close()
    except OSError:
        pass  # the container ended before reading it all: its output says why


def _interpret(output: bytes, total: int, stderr: bytes, returncode: int, image: str) -> TestRun:
    frame = _FRAME.search(output)
    if frame is None:
        _raise_engine_failure(stderr.decode("utf-8", "replace"), returncode, image)
    assert frame is not None
    status = frame.group(1).decode()
    code = int(frame.group(2))
    log_n, summary_n, tamper_n = (int(frame.group(i)) for i in (5, 6, 7))
    body = output[: frame.start()]
    if len(body) < log_n + summary_n + tamper_n:
        raise GradingFailure("engine_error", "the grading container's output was cut short")
    tamper_text = body[len(body) - tamper_n :].decode("utf-8", "replace")
    summary = body[len(body) - tamper_n - summary_n : len(body) - tamper_n].decode(
        "utf-8", "replace"
    )
    log = body[len(body) - tamper_n - summary_n - log_n : len(body) - tamper_n - summary_n]
    log_text = log.decode("utf-8", "replace")
    tamper = [line for line in tamper_text.split("\n") if line]
    if status == "patch_failed":
        raise GradingFailure("patch_failed", f"the diff does not apply: {log_text[-1000:]}")
    if status in ("no_testbed", "bad_runner", "check_failed"):
        raise GradingFailure("engine_error", f"{image}: {status}: {log_text.strip()[-1000:]}")
    # Bytes before the frame: something in the container wrote to the grader's own output
    # (PID 1's stdout) rather than to the tests' log. Only a deliberate attempt does that.
    if total > len(output) or len(body) > log_n + summary_n + tamper_n:
        tamper.append("output written around the test log: the container's stdout")
    statuses = parse_pytest_log(summary)
    # A test whose status in the printed output is not the one pytest reported: lines were
    # printed to claim it. Keys pytest never reported are left alone: a line split by stray
    # stderr output makes one, and a claim about a test that does not exist pays nothing.
    faked = sorted(
        key
        for key, value in parse_pytest_log(log_text).items()
        if key in statuses and statuses[key] != value
    )
    if faked:
        tamper.append(f"test status lines pytest did not write: {', '.join(faked)[:500]}")
    start, end = frame.group(3), frame.group(4)
    tests_s = float(end) - float(start) if start and end and status == "ran" else 0.0
    return TestRun(
        log=log_text,
        statuses={} if tamper else statuses,
        exit_code=code,
        # 137: `timeout -s KILL` fired (or the tests were OOM-killed): a model outcome.
        timed_out=status == "ran" and code == 137,
        tests_s=tests_s,
        tamper=tamper,
    )


def _raise_engine_failure(stderr: str, returncode: int, image: str) -> None:
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
