"""A persistent, sandboxed Python REPL over one working copy, driven from the worker.

One long-lived process per rollout keeps its namespace across steps. A step that runs past its
time limit is interrupted (KeyboardInterrupt in the agent's code); if the REPL does not answer
within a grace period, or dies (the code killed it, ran out of memory...), it is replaced by a
fresh one and the agent is told its variables are gone. `llm_query` calls from the code are
answered by the worker through `on_llm_query`, outside the sandbox (which has no network);
`llm_query_batched` asks them concurrently, at most `BATCH_CONCURRENCY` at a time, answers in order.

A sandbox that cannot start (bubblewrap unable to create its namespaces, say under Docker's
default seccomp) or whose REPL dies before it says it is ready raises `SandboxError`: our
infrastructure, retried as a fresh rollout, never scored. Once the REPL is ready, its death is
the code's doing: counted in `restarts` and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from common.errors import SandboxError
from rollout_workers import sandbox

SERVER_SOURCE = (Path(__file__).parent / "repl_server.py").read_text()
_PR_SET_CHILD_SUBREAPER = 36
# bwrap processes this worker started and reaps itself (asyncio waits for them).
_OWN_BWRAPS: set[int] = set()
INTERRUPT_GRACE_S = 3.0
START_TIMEOUT_S = 60.0  # for the REPL to say it is ready (Python starts in ~0.1 s when idle)
RESTART_NOTICE = "[the REPL was restarted: variables from earlier steps are gone]"
_MAX_LINE = 64 << 20  # one protocol line (a block's output); longer means a broken REPL
# Sub-queries of one llm_query_batched call in flight at once (each is a sub-agent with a REPL of
# its own); the rollout's --max-sub-queries bounds how many there are in all.
BATCH_CONCURRENCY = 8


@dataclass
class ExecResult:
    stdout: str
    stderr: str  # tracebacks, warnings, and our own notes (interrupted, restarted)
    seconds: float
    final_answer: str | None
    timed_out: bool = False
    restarted: bool = False
    llm_seconds: float = 0.0  # spent answering llm_query: not the code's own time

    @property
    def output(self) -> str:
        """What the model is shown: stdout, then stderr."""
        if not (self.stdout and self.stderr):
            return self.stdout or self.stderr
        return self.stdout.removesuffix("\n") + "\n" + self.stderr


class Repl:
    def __init__(
        self,
        workdir: Path,
        on_llm_query: Callable[[str], Awaitable[str]],
        limits: sandbox.SandboxLimits | None = None,
        allow_finish: bool = True,
        parent: Repl | None = None,
    ) -> None:
        """`parent`: a REPL over the same working copy whose uid (and files) this one shares."""
        self.workdir = workdir
        self.on_llm_query = on_llm_query
        self.limits = limits or sandbox.SandboxLimits()
        self.allow_finish = allow_finish
        self.parent = parent
        self.uid = parent.uid if parent is not None else sandbox.sandbox_uid()
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._stderr: _Tail | None = None

    async def start(self) -> None:
        """Start the sandbox and wait for its REPL to say it is ready; SandboxError if it
        cannot (the message carries what bubblewrap or Python printed)."""
        _become_subreaper()
        if self.parent is None:
            sandbox.prepare_workdir(self.workdir, self.uid)
        argv, cwd = sandbox.command(self.workdir, SERVER_SOURCE, self.limits)
        try:
            self._process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=sandbox.environment(self.allow_finish),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                preexec_fn=sandbox.preexec(self.limits, self.uid),
                limit=_MAX_LINE,
            )
        except OSError as exc:
            raise SandboxError(f"cannot start the sandboxed REPL: {exc}") from exc
        _OWN_BWRAPS.add(self._process.pid)
        assert self._process.stderr is not None
        self._stderr = _Tail(self._process.stderr)
        try:
            ready = await asyncio.wait_for(self._receive(), START_TIMEOUT_S)
        except (TimeoutError, ValueError, ConnectionError, asyncio.IncompleteReadError):
            ready = None
        if ready is None or ready.get("op") != "ready":
            process, stderr = self._process, self._stderr
            with contextlib.suppress(TimeoutError):  # let it finish saying why
                await asyncio.wait_for(process.wait(), 2)
            await stderr.settle(1)
            await self.close()
            raise SandboxError(
                f"the sandbox did not start (exit {process.returncode}): "
                f"{stderr.text() or 'no output'}. Check `{' '.join(argv[:2])} ...` by hand; in a "
                "container, run it with seccomp=unconfined and apparmor=unconfined, as root"
            )

    async def execute(self, code: str, timeout_s: float) -> ExecResult:
        """Run one code block; never raises for anything the code does."""
        if self._process is None or self._process.returncode is not None:
            await self._restart()
        started = time.monotonic()
        result = ExecResult(stdout="", stderr="", seconds=0.0, final_answer=None)
        try:
            await self._send({"op": "exec", "code": code})
            reply = await self._await_done(result, deadline=started + timeout_s)
        except (TimeoutError, ConnectionError, ValueError, asyncio.IncompleteReadError):
            reply = None
        if reply is None and not result.timed_out:
            result.stderr = "[the REPL died while running this code]"
        if reply is None:
            await self._restart()
            result.restarted = True
            result.stderr = f"{result.stderr}\n{RESTART_NOTICE}".strip()
        else:
            result.stdout = str(reply.get("stdout", ""))
            result.stderr = str(reply.get("stderr", ""))
            result.final_answer = reply.get("final_answer")
            if result.timed_out:
                result.stderr += f"\n[interrupted after {timeout_s:.0f}s]"
        result.seconds = time.monotonic() - started - result.llm_seconds
        return result

    async def _await_done(self, result: ExecResult, deadline: float) -> dict | None:
        """Read messages until `done`, answering llm_query; interrupt at the deadline."""
        interrupted_at: float | None = None
        while True:
            now = time.monotonic()
            limit = (
                deadline + result.llm_seconds
                if interrupted_at is None
                else interrupted_at + INTERRUPT_GRACE_S
            )
            try:
                message = await asyncio.wait_for(self._receive(), max(0.01, limit - now))
            except TimeoutError:
                if interrupted_at is not None:
                    return None  # no answer to the interrupt: replace the REPL
                result.timed_out = True
                interrupted_at = time.monotonic()
                self._interrupt()
                continue
            if message is None:
                return None  # the REPL exited
            if message.get("op") == "done":
                return message
            if message.get("op") == "llm_query":
                began = time.monotonic()
                text = await self.on_llm_query(str(message.get("prompt", "")))
                result.llm_seconds += time.monotonic() - began
                await self._send({"op": "llm_result", "text": text})
            elif message.get("op") == "llm_query_batched":
                began = time.monotonic()
                texts = await self._ask_all([str(p) for p in message.get("prompts") or []])
                result.llm_seconds += time.monotonic() - began
                await self._send({"op": "llm_results", "texts": texts})

    async def _ask_all(self, prompts: list[str]) -> list[str]:
        """Every prompt answered concurrently (bounded); answers in the prompts' order."""
        slots = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def ask(prompt: str) -> str:
            async with slots:
                return await self.on_llm_query(prompt)

        tasks = [asyncio.ensure_future(ask(prompt)) for prompt in prompts]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # one failed (the endpoint gave up): the others are not left running
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop the sandbox so that every process in it is reaped, none left a zombie: kill the
        pid namespace's init (the kernel then kills the rest and init reaps them), let bwrap
        reap init and exit, and only then reap bwrap."""
        process, self._process = self._process, None
        if self._stderr is not None:
            self._stderr.stop()
        if process is None:
            return
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(process.pid).children()
            if children and children[0].name() == "bwrap":
                children[0].kill()
            else:  # no bubblewrap: the REPL is our child; its descendants go first
                _kill_descendants(process.pid)
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            _kill_descendants(process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        _OWN_BWRAPS.discard(process.pid)
        await _reap_orphaned_inits()
        if self.parent is None:
            # Whatever escaped the process tree (no bubblewrap: a daemon the code started) still
            # runs as the sandbox's uid. Sub-REPLs share that uid with a live parent: not them.
            await asyncio.to_thread(sandbox.kill_all, self.uid, set(_OWN_BWRAPS))

    async def _restart(self) -> None:
        await self.close()
        self.restarts += 1
        await self.start()

    async def _send(self, message: dict) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write((json.dumps(message) + "\n").encode())
        await self._process.stdin.drain()

    async def _receive(self) -> dict | None:
        assert self._process is not None and self._process.stdout is not None
        line = await self._process.stdout.readline()
        return json.loads(line) if line else None

    def _interrupt(self) -> None:
        """SIGINT to the REPL process itself (the first Python inside the sandbox)."""
        if self._process is None:
            return
        with contextlib.suppress(psutil.Error):
            family = [
                psutil.Process(self._process.pid),
                *psutil.Process(self._process.pid).children(recursive=True),
            ]
            repl = next(p for p in family if p.name().startswith("python"))
            repl.send_signal(2)


class _Tail:
    """Keeps the last bytes of the sandbox's stderr (bubblewrap's and Python's own errors), so
    that a sandbox that cannot start says why; the pipe is drained so it never blocks."""

    def __init__(self, stream: asyncio.StreamReader, keep: int = 2000) -> None:
        self._data = b""
        self._keep = keep
        self._task = asyncio.ensure_future(self._drain(stream))

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, ValueError):
            while chunk := await stream.read(65536):
                self._data = (self._data + chunk)[-self._keep :]

    async def settle(self, timeout_s: float) -> None:
        """Wait (a bounded time) until everything written so far has been read."""
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)

    def text(self) -> str:
        return " | ".join(self._data.decode(errors="replace").split("\n")).strip(" |")

    def stop(self) -> None:
        self._task.cancel()


def _become_subreaper() -> None:
    """Orphans of our sandboxes come to this process instead of PID 1 (which, in some
    containers, never reaps them)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)


async def _reap_orphaned_inits(wait_s: float = 2.0) -> None:
    """When the REPL dies first, bwrap may exit before its pid-namespace init does, and that
    init is orphaned to us: reap it (only bwraps asyncio is not waiting for)."""
    deadline = time.monotonic() + wait_s
    while True:
        orphans = [
            child
            for child in psutil.Process().children()
            if child.pid not in _OWN_BWRAPS and _is_bwrap(child)
        ]
        for child in orphans:
            with contextlib.suppress(ChildProcessError, psutil.Error):
                if child.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(child.pid, os.WNOHANG)
        if not orphans or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.02)


def _is_bwrap(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return process.name() == "bwrap"
    return False


def _kill_descendants(pid: int) -> None:
    with contextlib.suppress(psutil.Error):
        for child in reversed(psutil.Process(pid).children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                child.kill()
