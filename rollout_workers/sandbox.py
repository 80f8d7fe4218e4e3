"""The sandbox model-written code runs in: bubblewrap, a throwaway uid and resource limits.

Inside: no network (all namespaces unshared), a read-only /usr (Python and tools), the rollout's
working copy at /repo (the only writable place besides a small /tmp), nothing else of the host:
no /etc, no /proc, no home directories, no other task, no hidden tests. Outside, before exec:
a uid of its own (so the process limit counts only this sandbox), limits on address space,
processes, file size, CPU time and open files, and death with the worker. Without bubblewrap
the code still gets the uid and the limits, with a loud warning that the file system and
network are open.
"""

from __future__ import annotations

import itertools
import logging
import os
import resource
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.process import die_with_parent

log = logging.getLogger(__name__)

SANDBOX_ROOT = "/repo"
_UID_BASE = 200_000  # sandbox uids: unused on hosts, no passwd entry needed


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: int = 4 << 30
    max_processes: int = 64
    max_file_bytes: int = 256 << 20
    cpu_seconds: int = 3600  # whole REPL lifetime; each step also has a wall-clock limit
    tmp_bytes: int = 256 << 20
    open_files: int = 1024


def sandbox_python() -> str:
    """A Python under /usr (visible in the sandbox); the worker's own as a last resort."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


_sandboxes_started = itertools.count()


def sandbox_uid() -> int | None:
    """A uid of its own for each sandbox (process limits count per uid), or None when the worker
    cannot switch uid (not root)."""
    if os.geteuid() != 0:
        return None
    return _UID_BASE + (os.getpid() * 1024 + next(_sandboxes_started)) % 1_000_000


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


def command(workdir: Path, source: str) -> tuple[list[str], str]:
    """(argv that runs `python -I -c source` in the sandbox, its working directory). With
    bubblewrap, argv[0] is bwrap and its first child is the sandbox's pid-namespace init."""
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
        "--dev", "/dev",  # no /proc: nothing to read about other processes (and containers
        # refuse a fresh procfs mount without extra privileges)
        "--size", str(SandboxLimits.tmp_bytes), "--tmpfs", "/tmp",
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
