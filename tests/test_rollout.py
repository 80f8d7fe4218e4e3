"""The simple REPL loop's parts: code extraction, truncation, the code runner's limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rollout_workers import sandbox
from rollout_workers.rollout import extract_code_blocks, truncate_middle


def test_python_and_repl_blocks_are_extracted_in_order() -> None:
    text = "a\n```python\nx = 1\n```\nb\n```repl\nprint(x)\n```\n```bash\nls\n```\n```python\n\n```"
    assert extract_code_blocks(text) == ["x = 1\n", "print(x)\n"]


def test_truncation_keeps_head_and_tail() -> None:
    text = "HEAD" + "x" * 10_000 + "TAIL"
    out = truncate_middle(text, 200)
    assert out.startswith("HEAD") and out.endswith("TAIL") and "characters cut" in out
    assert len(out) < 300
    assert truncate_middle("short", 200) == "short"


def test_runner_reports_output_finish_and_timeouts(tmp_path: Path) -> None:
    tmp_path = tmp_path / "repo"
    tmp_path.mkdir()
    ran = asyncio.run(sandbox.run_block("print(6 * 7)", tmp_path, 10))
    assert ran.output.strip() == "42" and not ran.timed_out
    assert not sandbox.finished(tmp_path)
    asyncio.run(sandbox.run_block("finish('done')", tmp_path, 10))
    assert sandbox.finished(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the finish marker stays out of the working copy
    slow = asyncio.run(
        sandbox.run_block("import time\nprint('start', flush=True)\ntime.sleep(60)", tmp_path, 0.5)
    )
    assert slow.timed_out and "interrupted" in slow.output and slow.seconds < 10
