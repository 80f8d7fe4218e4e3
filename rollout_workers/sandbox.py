"""The sandbox model-written code runs in: bubblewrap, a throwaway uid and resource limits.

Inside: no network (all namespaces unshared), a read-only /usr (Python and tools), the rollout's
working copy at /repo (the only writable place besides a small /tmp and /dev/shm; the rest of
/dev is read-only device nodes, so it cannot hold files that eat the host's RAM), nothing else of
the host: no /etc, no /proc, no home directories, no other task, no hidden tests. Outside, before
exec: a uid of its own, drawn at random from a billion (so the process limit counts only this
sandbox, even beside other workers' containers on the same host, whose pids and counters repeat
ours), limits on address space, processes, file size, CPU time and open files, and death with the
worker. Without bubblewrap the code still gets the uid and the limits, with a loud warning that
the file system and network are open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from common.process import die_with_parent

log = logging.getLogger(__name__)

SANDBOX_ROOT = "/repo"
# Sandbox uids: no passwd entry needed, far above system, user and the usual subuid ranges.
# Drawn at random, two of 64 live sandboxes share one with probability about 2e-6.
_UID_RANGE = (1 << 30, (1 << 31) - (1 << 16))


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: int = 4 << 30
    max_processes: int = 64
    max_file_bytes: int = 256 << 20
    cpu_seconds: int = 3600  # whole REPL lifetime; each step also has a wall-clock limit
    tmp_bytes: int = 256 << 20
    shm_bytes: int = 64 << 20  # /dev/shm (multiprocessing needs it); RAM, like /tmp
    open_files: int = 1024


def sandbox_python() -> str:
    """A Python under /usr (visible in the sandbox); the worker's own as a last resort."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def sandbox_uid() -> int | None:
    """A uid of its own for each sandbox (process limits count per uid, host-wide), or None when
    the worker cannot switch uid (not root). Random, not derived from the pid: workers in
    separate containers all run as pid 1 or so and would share one RLIMIT_NPROC."""
    if os.geteuid() != 0:
        return None
    while True:
        uid = _UID_RANGE[0] + secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0])
        if not live_processes(uid):  # none visible from here uses it
            return uid


def live_processes(uid: int | None) -> list[psutil.Process]:
    """Processes running as `uid`, zombies excluded (they can no longer do anything)."""
    if uid is None:
        return []
    found = []
    for process in psutil.process_iter(["uids", "status"]):
        with contextlib.suppress(psutil.Error):
            if process.info["uids"].real == uid and process.info["status"] != "zombie":
                found.append(process)
    return found


def kill_all(uid: int | None, keep: set[int], timeout_s: float = 5.0) -> list[int]:
    """SIGKILL every process of a sandbox uid until none is left, reaping those that were
    orphaned to this worker (a subreaper) except the pids in `keep` (asyncio waits for those).
    Returns the pids still alive at the deadline (none, short of a process stuck in the kernel)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = live_processes(uid)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        _reap_zombie_children(uid, keep)
        if not alive or time.monotonic() > deadline:
            return [p.pid for p in alive]
        time.sleep(0.01)


def _reap_zombie_children(uid: int | None, keep: set[int]) -> None:
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if (
                child.pid not in keep
                and child.uids().real == uid
                and child.status() == psutil.STATUS_ZOMBIE
            ):
                os.waitpid(child.pid, os.WNOHANG)


def prepare_workdir(workdir: Path, uid: int | None) -> None:
    """Hand the working copy to the sandbox's uid (the worker, as root, still reads it); its
    parent, private to the rollout, becomes traversable for that uid."""
    if uid is None:
        return
    for root, dirs, files in os.walk(workdir):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), uid, uid)
    os.chown(workdir, uid, uid)
    os.chown(workdir.parent, uid, uid)


def command(
    workdir: Path, source: str, limits: SandboxLimits | None = None
) -> tuple[list[str], str]:
    """(argv that runs `python -I -c source` in the sandbox, its working directory). With
    bubblewrap, argv[0] is bwrap and its first child is the sandbox's pid-namespace init."""
    limits = limits or SandboxLimits()
    python = sandbox_python()
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        log.warning(
            "SANDBOX WEAKENED: bubblewrap (bwrap) is not installed, so model code runs with only "
            "a uid and resource limits: it can use the network and read the host's files. "
            "Install it: apt-get install bubblewrap"
        )
        return [python, "-I", "-c", source], str(workdir)
    argv = [
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    if not python.startswith("/usr/"):
        prefix = sys.base_prefix
        argv += ["--ro-bind", prefix, prefix]
    argv += [
        "--bind", str(workdir), SANDBOX_ROOT, "--chdir", SANDBOX_ROOT,
        # No /proc: nothing to read about other processes (and containers refuse a fresh procfs
        # mount without extra privileges). /dev is a tmpfs as large as the host's RAM: read-only
        # (its device nodes stay writable), with a bounded /dev/shm.
        "--dev", "/dev", "--remount-ro", "/dev",
        "--size", str(limits.shm_bytes), "--tmpfs", "/dev/shm",
        "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
        python, "-I", "-c", source,
    ]  # fmt: skip
    return argv, "/"


def preexec(limits: SandboxLimits, uid: int | None) -> Callable[[], None]:
    """Runs in the child before exec: limits first (as root), then the uid, then
    death with the worker."""
    die = die_with_parent(signal.SIGKILL)

    def apply() -> None:
        for kind, value in (
            (resource.RLIMIT_AS, limits.memory_bytes),
            (resource.RLIMIT_NPROC, limits.max_processes),
            (resource.RLIMIT_FSIZE, limits.max_file_bytes),
            (resource.RLIMIT_CPU, limits.cpu_seconds),
            (resource.RLIMIT_NOFILE, limits.open_files),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(kind, (value, value))
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        die()

    return apply


def environment(allow_finish: bool) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "RLM_REPL_FINISH": "1" if allow_finish else "0",
    }
