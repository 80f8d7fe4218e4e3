"""Model-written code is hostile: each attack is contained, the REPL ends or continues cleanly,
the worker lives on, and nothing is left behind."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psutil
import pytest

from rollout_workers.repl import Repl
from rollout_workers.sandbox import SandboxLimits
from tests.conftest import ROOT
from tests.test_rollout import _workdir

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


_CHILDREN_BEFORE: dict[int, set[int]] = {}  # id(repl) -> this process's descendants before


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def hostile_session(
    blocks: list[tuple[str, float]], limits: SandboxLimits | None = None
) -> tuple[list, Repl, Path]:
    import asyncio

    workdir = _workdir()

    async def answer(prompt: str) -> str:
        return ""

    repl = Repl(workdir, answer, limits)
    _CHILDREN_BEFORE[id(repl)] = _descendants()

    async def session() -> list:
        await repl.start()
        try:
            return [await repl.execute(code, timeout) for code, timeout in blocks]
        finally:
            await repl.close()

    return asyncio.run(session()), repl, workdir


def sandbox_processes(uid: int | None) -> list[psutil.Process]:
    return [
        p for p in psutil.process_iter(["uids"]) if uid is not None and p.info["uids"].real == uid
    ]


def assert_clean(repl: Repl) -> None:
    """No process of the sandbox is left: none runs as its uid (root workers), and none of this
    process's descendants (every worker) is new since the session started."""
    assert repl.uid is not None or os.geteuid() != 0, "a root worker gives each sandbox a uid"
    left = []
    new = [psutil.Process(pid) for pid in _descendants() - _CHILDREN_BEFORE.pop(id(repl))]
    for process in [*sandbox_processes(repl.uid), *new]:
        with contextlib.suppress(psutil.NoSuchProcess):  # gone meanwhile: not left over
            if process.status() != psutil.STATUS_ZOMBIE:
                left.append((process.pid, process.status(), process.ppid(), process.name()))
    assert left == [], f"sandbox processes outlived the REPL (pid, status, parent, name): {left}"


def test_no_network() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[object] = []
    listener.settimeout(5)
    thread = threading.Thread(target=lambda: accepted.extend(_accept(listener)), daemon=True)
    thread.start()
    code = (
        "import socket\ntry:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n    print('CONNECTED')\n"
        "except OSError as e:\n    print('blocked', e)"
    )
    results, repl, _ = hostile_session([(code, 20), ("print('alive')", 20)])
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept: nothing came, no need to wait
    thread.join()
    listener.close()
    assert "blocked" in results[0].output and "CONNECTED" not in results[0].output
    assert accepted == []
    assert results[1].output.strip() == "alive"
    assert_clean(repl)


def _accept(listener: socket.socket) -> list[object]:
    try:
        return [listener.accept()]
    except OSError:
        return []


def test_host_files_are_out_of_reach(tmp_path: Path) -> None:
    secret = tmp_path / "other-task" / "hidden_test.py"
    secret.parent.mkdir()
    secret.write_text("SECRET = 1\n")
    marker = f"/tmp/rlm-hostile-{uuid.uuid4().hex}"
    code = (
        f"for path in ['/etc/shadow', '/etc/passwd', {str(secret)!r}, '/r2e_tests', '/root']:\n"
        "    try:\n        open(path).read()\n        print('READ', path)\n"
        "    except OSError as e:\n        print('denied', path)\n"
        f"for path in ['/usr/evil.txt', {str(tmp_path / 'planted.txt')!r}, '../escape.txt']:\n"
        "    try:\n        open(path, 'w').write('x')\n        print('WROTE', path)\n"
        "    except OSError as e:\n        print('denied', path)\n"
    )
    results, repl, workdir = hostile_session(
        [(code, 20), (f"open({marker!r}, 'w').write('x')", 20)]
    )
    output = results[0].output
    lines = output.strip().splitlines()
    assert "READ" not in output
    # Every host path is refused; '../escape.txt' may be written inside the sandbox (its '/'
    # is a private mount), never next to the working copy on the host.
    assert [line for line in lines if line.startswith("denied")] == [
        "denied /etc/shadow",
        "denied /etc/passwd",
        f"denied {secret}",
        "denied /r2e_tests",
        "denied /root",
        "denied /usr/evil.txt",
        f"denied {tmp_path / 'planted.txt'}",
    ] + (["denied ../escape.txt"] if "WROTE ../escape.txt" not in output else []), output
    assert not (workdir.parent / "escape.txt").exists()
    assert "WROTE /usr" not in output
    assert not (tmp_path / "planted.txt").exists()
    assert not Path(marker).exists()  # the sandbox's /tmp is its own
    assert secret.read_text() == "SECRET = 1\n"
    assert_clean(repl)


FORK_PROBE = """
import os, signal, time
pids = []
try:
    while len(pids) < 1000:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        pids.append(pid)
    print('uncapped', len(pids))
except OSError as e:
    print('capped', len(pids), e.errno)
finally:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
"""


def test_processes_are_capped() -> None:
    results, repl, _ = hostile_session([(FORK_PROBE, 30), ("print('alive')", 20)])
    words = results[0].output.split()
    assert words[0] == "capped" and int(words[2]) == errno.EAGAIN, results[0].output
    # The cap counts the sandbox's own processes (its uid): the REPL and its helpers first.
    assert 0 < int(words[1]) < SandboxLimits().max_processes
    assert results[1].output.strip() == "alive"
    assert_clean(repl)


def test_fork_bomb_is_capped_and_cleaned_up() -> None:
    bomb = "import os\nwhile True:\n    os.fork()"
    results, repl, _ = hostile_session([(bomb, 10), ("print('alive')", 20)])
    first = results[0]
    # Capped: a fork fails (the REPL sees it, or is replaced when the bomb's children take
    # it down); an uncapped bomb would run to the step's time limit.
    assert not first.timed_out, first
    assert "BlockingIOError" in first.output or first.restarted, first
    assert results[1].output.strip() == "alive"
    assert_clean(repl)


def test_huge_allocation_fails_inside() -> None:
    results, repl, _ = hostile_session([("x = bytearray(8 * 1024**3)", 30), ("print('alive')", 20)])
    assert "MemoryError" in results[0].output
    assert results[1].output.strip() == "alive"
    assert_clean(repl)


def test_endless_loop_that_swallows_interrupts_gets_a_fresh_repl() -> None:
    loop = (
        "while True:\n    try:\n        while True:\n            pass\n"
        "    except BaseException:\n        pass"
    )
    results, repl, _ = hostile_session([(loop, 1), ("print('alive')", 20)])
    assert results[0].timed_out and results[0].restarted
    assert results[1].output.strip() == "alive"
    assert_clean(repl)


WORKER = """
import asyncio, json, sys
from pathlib import Path
from rollout_workers.repl import Repl

async def answer(prompt):
    return ""

async def main():
    repl = Repl(Path(sys.argv[1]), answer)
    await repl.start()
    try:
        results = [await repl.execute(code, timeout) for code, timeout in json.loads(sys.argv[2])]
    finally:
        await repl.close()
    print(json.dumps([[r.output, r.restarted] for r in results]))

asyncio.run(main())
"""


def run_in_a_worker(blocks: list[tuple[str, float]]) -> subprocess.CompletedProcess:
    """A REPL session in a process of its own, as a worker runs it."""
    return subprocess.run(
        [sys.executable, "-c", WORKER, str(_workdir()), json.dumps(blocks)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_killing_its_parent_or_its_group_leaves_the_worker_alive() -> None:
    blocks = [
        ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('still here')", 20),
        ("import os, signal\nos.killpg(0, signal.SIGKILL)", 20),
        ("print('alive')", 20),
    ]
    worker = run_in_a_worker(blocks)
    assert worker.returncode == 0, worker.stderr[-2000:]  # the worker lived to report
    results = json.loads(worker.stdout.splitlines()[-1])
    assert results[1][1], "the REPL that killed its own group was replaced"
    assert results[2][0].strip() == "alive"


def test_dev_cannot_hold_the_hosts_ram() -> None:
    # /dev was a tmpfs as large as the host's RAM: 300 MiB went in past RLIMIT_AS and /tmp's cap.
    code = (
        "def fill(prefix):\n"
        "    written = 0\n"
        "    for i in range(100):\n"  # up to 400 MiB
        "        try:\n"
        "            with open(f'{prefix}{i}', 'wb') as f:\n"
        "                f.write(b'x' * (4 << 20))\n"
        "            written += 4 << 20\n"
        "        except OSError as e:\n"
        "            return written, e.errno\n"
        "    return written, None\n"
        "print('dev', *fill('/dev/fill'))\n"
        "print('shm', *fill('/dev/shm/fill'))\n"
        "open('/dev/null', 'wb').write(b'still a device')\n"
        "print('urandom', len(open('/dev/urandom', 'rb').read(16)))\n"
    )
    results, repl, _ = hostile_session([(code, 60)])
    lines = dict(line.split(" ", 1) for line in results[0].output.strip().splitlines())
    assert lines["dev"] == f"0 {errno.EROFS}", results[0].output
    shm_written, shm_errno = map(int, lines["shm"].split())
    assert shm_written <= SandboxLimits().shm_bytes and shm_errno == errno.ENOSPC
    assert lines["urandom"] == "16"
    assert_clean(repl)


@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox uids need a root worker")
def test_workers_in_separate_containers_draw_distinct_uids() -> None:
    # Containers on one host each run their worker as pid 1 (here: fresh pid namespaces); a uid
    # derived from the pid was the same in all of them, so they shared one RLIMIT_NPROC.
    probe = (
        "import os\nfrom rollout_workers.sandbox import sandbox_uid\n"
        "print(os.getpid(), sandbox_uid(), sandbox_uid())"
    )
    runs = [
        subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", probe],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.split()
        for _ in range(2)
    ]  # fmt: skip
    assert [run[0] for run in runs] == ["1", "1"]
    uids = [int(uid) for run in runs for uid in run[1:]]
    assert len(set(uids)) == 4
    assert all(uid >= 1 << 30 for uid in uids)  # far from system, user and subuid ranges
