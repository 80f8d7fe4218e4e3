"""Per-step overhead of the REPL agent, the model's time excluded.

A step here is what the worker does between one completion and the next request: find the code
blocks in the model's reply, run them in the sandboxed REPL, truncate the output and build the
next user message. Also: the one-time costs of a rollout (working copy, sandbox start, final
diff) for a repository of `--files` files. Target: under 50 ms a step.

    uv run python benchmarks/repl_overhead.py [--steps 200] [--files 500]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rollout_workers.repl import Repl  # noqa: E402
from rollout_workers.text import extract_code_blocks, truncate_middle  # noqa: E402
from rollout_workers.workdir import diff_against  # noqa: E402

REPLIES = {
    "no-op block": "Let me set a variable.\n```repl\nx = 1\n```",
    "print small": "```repl\nprint(sorted(list_files())[:5])\n```",
    "read_file": "```repl\nprint(read_file('pkg/mod_7.py', 1, 40))\n```",
    "search": "```repl\nprint(search('def f_3', 'pkg')[:3])\n```",
    "100 KB output": "```repl\nprint('y' * 100_000)\n```",
    "two blocks": "```repl\na = 2\n```\nthen\n```python\nprint(a * 21)\n```",
}


def make_repo(root: Path, files: int) -> None:
    (root / "pkg").mkdir(parents=True)
    for i in range(files):
        body = "".join(f"def f_{j}(x):\n    return x + {j}\n\n" for j in range(20))
        (root / "pkg" / f"mod_{i}.py").write_text(body)


async def measure(steps: int, files: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="rlm-bench-"))
    cache = base / "cache"
    make_repo(cache, files)

    started = time.perf_counter()
    work_root = Path(tempfile.mkdtemp(prefix="rlm-rollout-bench-"))
    workdir = work_root / "repo"
    shutil.copytree(cache, workdir)
    copy_s = time.perf_counter() - started

    async def no_llm(prompt: str) -> str:
        return ""

    repl = Repl(workdir, no_llm)
    started = time.perf_counter()
    await repl.start()
    await repl.execute("pass", 30)
    start_s = time.perf_counter() - started

    rows = []
    for name, reply in REPLIES.items():
        times = []
        for _ in range(steps):
            began = time.perf_counter()
            outputs = []
            for code in extract_code_blocks(reply):
                result = await repl.execute(code, 30)
                outputs.append(truncate_middle(result.output, 3000))
            _ = {"role": "user", "content": "\n\n".join(f"Output:\n{o}" for o in outputs)}
            times.append(time.perf_counter() - began)
        ordered = sorted(times)
        rows.append(
            (
                name,
                statistics.mean(times),
                ordered[len(ordered) // 2],
                ordered[int(0.99 * (len(ordered) - 1))],
            )
        )
    await repl.close()

    (workdir / "pkg" / "mod_3.py").write_text("changed\n")
    started = time.perf_counter()
    diff = diff_against(cache, workdir)
    diff_s = time.perf_counter() - started
    shutil.rmtree(base)
    shutil.rmtree(work_root)

    print(f"per step, {steps} steps each (ms)")
    print("| step | mean | p50 | p99 |")
    print("|---|---|---|---|")
    for name, mean, p50, p99 in rows:
        print(f"| {name} | {1000 * mean:.2f} | {1000 * p50:.2f} | {1000 * p99:.2f} |")
    print(f"\nonce per rollout, repository of {files} files (ms)")
    print("| working copy | sandbox start + first exec | final diff |")
    print("|---|---|---|")
    print(
        f"| {1000 * copy_s:.1f} | {1000 * start_s:.1f} | {1000 * diff_s:.1f} ({len(diff)} chars) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--files", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(measure(args.steps, args.files))


if __name__ == "__main__":
    main()
