"""The sandbox's resource limits (file size, CPU time, open files) hold, with or without
bubblewrap (then with a loud warning), and a sandbox dies with its worker."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from rollout_workers.sandbox import SandboxLimits
from tests.conftest import ROOT, wait_for
from tests.test_hostile import WORKER, assert_clean, hostile_session
from tests.test_rollout import _workdir

LIMITS_PROBE = """
import resource
for name in ('FSIZE', 'CPU', 'NOFILE', 'NPROC', 'AS'):
    print(name, *resource.getrlimit(getattr(resource, 'RLIMIT_' + name)))
try:
    with open('big', 'wb') as f:
        f.write(b'x' * (2 << 20))
    print('BIG written')
except OSError as e:
    print('BIG', e.errno)
files = []
try:
    while len(files) < 100_000:
        files.append(open('/dev/null'))
except OSError as e:
    print('OPEN', len(files), e.errno)
for f in files:
    f.close()
"""
SMALL = SandboxLimits(max_file_bytes=1 << 20, cpu_seconds=2, open_files=64)


def _probe(limits: SandboxLimits) -> tuple[dict[str, list[int]], list]:
    burn = "while True:\n    pass"  # CPU past RLIMIT_CPU: SIGXCPU ends the REPL
    blocks = [(LIMITS_PROBE, 30), (burn, 30), ("print('alive')", 20)]
    results, repl, _ = hostile_session(blocks, limits)
    lines = [line.split() for line in results[0].output.strip().splitlines()]
    assert_clean(repl)
    return {words[0]: [int(w) for w in words[1:]] for words in lines}, results


def _check(values: dict[str, list[int]], results: list, limits: SandboxLimits) -> None:
    assert values["FSIZE"] == [limits.max_file_bytes] * 2
    assert values["CPU"] == [limits.cpu_seconds] * 2
    assert values["NOFILE"] == [limits.open_files] * 2
    assert values["NPROC"] == [limits.max_processes] * 2
    assert values["AS"] == [limits.memory_bytes] * 2
    assert values["BIG"] == [errno.EFBIG], "a file past the size limit cannot be written"
    opened, error = values["OPEN"]
    assert opened < limits.open_files and error == errno.EMFILE
    burn = results[1]
    assert burn.restarted and not burn.timed_out, burn  # killed by the CPU limit, not the clock
    assert results[2].output.strip() == "alive"


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
def test_file_size_cpu_time_and_open_files_are_limited() -> None:
    values, results = _probe(SMALL)
    _check(values, results, SMALL)


@pytest.mark.slow
def test_without_bubblewrap_the_limits_still_apply_with_a_loud_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it (the sandbox's python: /usr)
    with caplog.at_level(logging.WARNING, logger="rollout_workers.sandbox"):
        values, results = _probe(SMALL)
    _check(values, results, SMALL)
    assert any("SANDBOX WEAKENED" in r.getMessage() for r in caplog.records), caplog.text


def test_default_limits_are_the_readmes() -> None:
    limits = SandboxLimits()
    assert (limits.memory_bytes, limits.max_processes) == (4 << 30, 64)
    assert limits.max_file_bytes and limits.cpu_seconds and limits.open_files


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
def test_the_sandbox_dies_with_its_worker() -> None:
    workdir = _workdir()
    blocks = [("import time\nopen('started', 'w').write('1')\ntime.sleep(600)", 600)]

    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(workdir), json.dumps(blocks)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: (workdir / "started").exists(), 60, "the sandbox running its code")
        sandbox = psutil.Process(worker.pid).children(recursive=True)
        assert sandbox, "the REPL runs in processes of its own"
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)

        def all_gone() -> bool:
            alive = []
            for process in sandbox:
                try:
                    if process.status() != psutil.STATUS_ZOMBIE:
                        alive.append(process)
                except psutil.NoSuchProcess:
                    pass
            return not alive

        wait_for(all_gone, 10, "the sandbox's processes to die with their worker")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    assert os.path.exists(workdir / "started")
