"""The REPL agent's parts: code extraction, truncation, the persistent sandboxed REPL."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from common.errors import SandboxError
from common.rewards import finished_reward
from rollout_workers import rollout, sandbox
from rollout_workers.policy import PolicyClient
from rollout_workers.repl import RESTART_NOTICE, Repl
from rollout_workers.rollout import RolloutOutcome
from rollout_workers.text import extract_code_blocks, truncate_middle
from rollout_workers.workdir import diff_against
from tests.conftest import remove_after_test
from tests.fakes.scripted_llm import ScriptedLLM
from tests.jobs import rollout_job, rollout_limits


def test_python_and_repl_blocks_are_extracted_in_order() -> None:
    text = "a\n```python\nx = 1\n```\nb\n```repl\nprint(x)\n```\n```bash\nls\n```\n```python\n\n```"
    assert extract_code_blocks(text) == ["x = 1\n", "print(x)\n"]


def test_truncation_keeps_head_and_tail() -> None:
    text = "HEAD" + "x" * 10_000 + "TAIL"
    out = truncate_middle(text, 200)
    assert out.startswith("HEAD") and out.endswith("TAIL") and "characters cut" in out
    assert len(out) < 300
    assert truncate_middle("short", 200) == "short"


def _workdir() -> Path:
    workdir = remove_after_test(Path(tempfile.mkdtemp(prefix="rlm-rollout-test-"))) / "repo"
    workdir.mkdir()
    (workdir / "pkg").mkdir()
    (workdir / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    return workdir


def run_session(blocks: list[tuple[str, float]], workdir: Path | None = None) -> list:
    workdir = workdir or _workdir()
    asked: list[str] = []

    async def answer(prompt: str) -> str:
        asked.append(prompt)
        return f"answer to {prompt}"

    async def session() -> list:
        repl = Repl(workdir, answer)
        await repl.start()
        try:
            return [await repl.execute(code, timeout) for code, timeout in blocks]
        finally:
            await repl.close()

    results = asyncio.run(session())
    return results


def test_state_tools_and_sub_queries_persist_across_steps() -> None:
    results = run_session(
        [
            ("x = 41\nprint(list_files())", 20),
            ("x += 1\nprint(x)", 20),
            ("print(read_file('pkg/mod.py', 2, 2))", 20),
            ("print(search('return'))", 20),
            ("print(llm_query('what is 6*7?'))", 20),
            ("print(run('echo from-shell; exit 3'))", 20),
            ("finish('done')", 20),
        ]
    )
    outputs = [r.output for r in results]
    assert outputs[0].strip() == "['pkg/mod.py']"
    assert outputs[1].strip() == "42"
    assert outputs[2].strip() == "2      return 1"
    assert outputs[3].strip() == "['pkg/mod.py:2:     return 1']"
    assert outputs[4].strip() == "answer to what is 6*7?"
    assert outputs[5].strip() == "from-shell"
    assert results[6].final_answer == "done" and results[0].final_answer is None


def test_a_step_that_runs_too_long_is_interrupted_and_the_repl_survives() -> None:
    results = run_session([("y = 7", 20), ("while True:\n    pass", 1), ("print(y)", 20)])
    assert results[1].timed_out and "interrupted" in results[1].output
    assert not results[1].restarted
    assert results[2].output.strip() == "7"


def test_a_repl_that_ignores_interrupts_or_dies_is_replaced_with_a_notice() -> None:
    stubborn = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)"
    results = run_session(
        [("z = 1", 20), (stubborn, 1), ("print('z' in globals())", 20),
         ("import os\nos._exit(3)", 20), ("print('alive')", 20)]
    )  # fmt: skip
    assert results[1].restarted and RESTART_NOTICE in results[1].output
    assert results[2].output.strip() == "False"
    assert results[3].restarted and "died" in results[3].output
    assert results[4].output.strip() == "alive"


def test_diff_against_the_cache_covers_edits_new_and_deleted_files() -> None:
    original = _workdir()
    changed = _workdir()
    (changed / "pkg" / "mod.py").write_text("def f():\n    return 2\n")
    (changed / "pkg" / "new.py").write_text("NEW = 1")
    (changed / "pkg" / "__pycache__").mkdir()
    (changed / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (original / "gone.txt").write_text("bye\n")
    diff = diff_against(original, changed)
    assert "diff --git a/pkg/mod.py b/pkg/mod.py\n--- a/pkg/mod.py\n+++ b/pkg/mod.py\n" in diff
    assert "-    return 1\n+    return 2\n" in diff
    assert "new file mode 100644\n--- /dev/null\n+++ b/pkg/new.py\n" in diff
    assert "+NEW = 1\n\\ No newline at end of file\n" in diff
    assert "deleted file mode 100644\n--- a/gone.txt\n+++ /dev/null\n" in diff
    assert "__pycache__" not in diff
    assert diff_against(original, original) == ""


def test_llm_query_runs_a_sub_agent_with_its_own_repl() -> None:
    from common.wire import PolicyRef
    from rollout_workers.policy import PolicyClient
    from rollout_workers.rollout import RolloutOutcome
    from rollout_workers.sub_agents import SubAgents
    from tests.fakes.agent_scripts import is_sub_agent
    from tests.fakes.scripted_llm import ScriptedLLM

    def script(messages: list, rng: object) -> str:
        assert is_sub_agent(messages)
        turn = sum(m["role"] == "assistant" for m in messages)
        if turn == 0:
            return "```repl\nprint(len(list_files()))\nfinish()\n```"
        return f"The repository has {messages[-1]['content'].split()[1]} file(s)."

    workdir = _workdir()
    limits = rollout_limits(retry_backoff_s=0.1)

    async def ask() -> tuple[str, RolloutOutcome]:
        with ScriptedLLM(script=script) as llm:
            client = PolicyClient(
                PolicyRef(inference_name="m@0", policy_step=0, endpoint=llm.url), limits
            )
            outcome = RolloutOutcome()
            agents = SubAgents(client, outcome, 2, workdir, 20, 1000)
            try:
                answers = [await agents("How many files?") for _ in range(3)]
            finally:
                await client.aclose()
        return answers, outcome

    answers, outcome = asyncio.run(ask())
    assert answers[0] == "The repository has 1 file(s)."
    assert "limit reached" in answers[2] and outcome.sub_queries == 2
    [history, _] = outcome.histories
    kinds = [item.kind for item in history.messages_and_choices]
    assert kinds == ["message", "message", "choice", "message", "choice"]
    observation = history.messages_and_choices[3].data["content"]
    assert "NameError" in observation  # a sub-agent cannot finish() the task


# --- Sandbox failures are infrastructure; a REPL the code kills is the model's doing ----------

NAMESPACE_ERROR = (
    "bwrap: No permissions to creating new namespace, likely because the kernel does not allow "
    "non-privileged user namespaces."
)


def fake_bwrap(monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    """A real `bwrap` executable first on PATH. Its directory is world-readable and writable:
    the sandbox's uid execs it (and may leave marks in it)."""
    directory = remove_after_test(Path(tempfile.mkdtemp(prefix="rlm-fake-bwrap-")))
    directory.chmod(0o777)
    executable = directory / "bwrap"
    executable.write_text(f"#!/bin/sh\n{script.format(dir=directory)}\n")
    executable.chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")
    return directory


@pytest.mark.parametrize(
    ("script", "says"),
    [
        (f"echo '{NAMESPACE_ERROR}' >&2\nexit 1", "No permissions to creating new namespace"),
        ("exec python3 -c 'import os, sys; sys.stderr.write(\"gone\\n\"); os._exit(7)'", "exit 7"),
    ],
    ids=["namespaces-refused", "repl-dies-before-ready"],
)
def test_a_sandbox_that_cannot_start_raises_sandbox_error(
    monkeypatch: pytest.MonkeyPatch, script: str, says: str
) -> None:
    fake_bwrap(monkeypatch, script)
    repl = Repl(_workdir(), _no_answer)
    with pytest.raises(SandboxError, match=says) as raised:
        asyncio.run(repl.start())
    assert "seccomp=unconfined" in str(raised.value)  # names the fix
    assert sandbox.live_processes(repl.uid) == []


def test_a_broken_sandbox_is_a_failed_rollout_never_a_reward(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    from redis import Redis

    from rollout_workers import job as job_module

    fake_bwrap(monkeypatch, f"echo '{NAMESPACE_ERROR}' >&2\nexit 1")
    with ScriptedLLM(script=_finish_at_once) as llm:
        job = rollout_job(llm.url, rollout_retries=1)

        async def attempt() -> object:
            client = PolicyClient(job.policy, job.limits)
            try:
                return await job_module._rollout_and_post(
                    Redis.from_url(redis_url), job, 0, client, None, "system", finished_reward
                )
            finally:
                await client.aclose()

        result = asyncio.run(attempt())
    assert result.status == "failed" and result.trajectory is None
    assert result.error.type == "SandboxError" and "namespace" in result.error.message
    assert result.attempts == 2  # retried as a fresh rollout, then failed
    assert llm.requests == 0  # no model turn was spent on a sandbox that never ran


def test_code_that_kills_its_repl_is_counted_and_the_rollout_goes_on() -> None:
    def script(messages: list, rng: object) -> str:
        turn = sum(m["role"] == "assistant" for m in messages)
        return "```python\nimport os\nos._exit(1)\n```" if turn == 0 else "```python\nfinish()\n```"

    outcome = _rollout(script)
    assert outcome.repl_restarts == 1 and outcome.finished


def test_a_sandbox_that_cannot_restart_raises_sandbox_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first sandbox starts (the real bwrap); once the code has killed its REPL, the next one
    # cannot: that is our infrastructure again, not the model's doing.
    real = shutil.which("bwrap")
    fake_bwrap(
        monkeypatch,
        f"if [ -e {{dir}}/started ]; then echo '{NAMESPACE_ERROR}' >&2; exit 1; fi\n"
        f'touch {{dir}}/started\nexec {real} "$@"',
    )

    def script(messages: list, rng: object) -> str:
        return "```python\nimport os\nos._exit(1)\n```"

    with pytest.raises(SandboxError, match="namespace"):
        _rollout(script)


def test_the_diff_is_read_after_every_sandbox_process_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A daemon the code leaves behind keeps writing; while anything of the sandbox runs it could
    # swap a file for a symlink or a FIFO under the diff.
    daemon = (
        "```python\nimport os, subprocess, time\n"
        "subprocess.Popen(['sh', '-c', 'while :; do date >> /repo/late.txt; done'],\n"
        "                 start_new_session=True)\n"
        "while not os.path.exists('late.txt'):\n    time.sleep(0.01)\nfinish()\n```"
    )
    alive_at_diff: list[list[int]] = []
    real_diff = rollout.diff_against

    def diff_once_checked(original: Path | None, workdir: Path) -> str:
        uid = workdir.stat().st_uid  # the sandbox's, when the worker is root
        alive_at_diff.append([p.pid for p in sandbox.live_processes(uid)])
        return real_diff(original, workdir)

    monkeypatch.setattr(rollout, "diff_against", diff_once_checked)
    outcome = _rollout(lambda messages, rng: daemon)
    assert outcome.finished and "late.txt" in outcome.diff
    assert alive_at_diff == [[]]


def _no_answer(prompt: str) -> Awaitable[str]:
    async def empty() -> str:
        return ""

    return empty()


def _finish_at_once(messages: list, rng: object) -> str:
    return "```python\nfinish()\n```"


def _rollout(script: Callable[[list, object], str]) -> RolloutOutcome:
    async def run() -> RolloutOutcome:
        with ScriptedLLM(script=script) as llm:
            job = rollout_job(llm.url)
            client = PolicyClient(job.policy, job.limits)
            try:
                return await rollout.run_rollout(job, client, "system")
            finally:
                await client.aclose()

    return asyncio.run(run())
