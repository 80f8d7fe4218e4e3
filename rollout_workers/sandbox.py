"""Runs one model-written code block in a subprocess inside the rollout's working directory.

This is the simplest runner: a fresh `python` per block, its own session (so the whole process
tree can be killed), killed with the worker (PR_SET_PDEATHSIG) and after `timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common.errors import SandboxError
from common.process import die_with_parent

_PRELUDE = """\
def finish(answer=""):
    with open({marker!r}, "w") as _f:
        _f.write(str(answer))
"""


def _finish_marker(workdir: Path) -> Path:
    """Beside the working copy, not in it: the marker must not show up in the agent's diff."""
    return workdir.parent / "finished"


@dataclass(frozen=True)
class BlockResult:
    output: str
    seconds: float
    timed_out: bool


async def run_block(code: str, workdir: Path, timeout_s: float) -> BlockResult:
    started = time.monotonic()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-c",
            _PRELUDE.format(marker=str(_finish_marker(workdir))) + code,
            cwd=workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
    except OSError as exc:
        raise SandboxError(f"cannot start the code runner: {exc}") from exc
    timed_out = False
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        timed_out = True
        stdout = b""
    finally:
        _kill_group(process.pid)
        await process.wait()
    output = stdout.decode(errors="replace")
    if timed_out:
        output += f"\n[interrupted: the code ran longer than {timeout_s:.0f}s]"
    return BlockResult(output, time.monotonic() - started, timed_out)


def finished(workdir: Path) -> bool:
    return _finish_marker(workdir).exists()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
