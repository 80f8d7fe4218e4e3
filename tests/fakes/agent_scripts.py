"""Scripted agent sessions for the fixture tasks: read the file, edit it, finish.

Rollouts of one group send identical first requests (one scenario each), so the script numbers
the conversations of each task apart as they start and alternates: per task, even ones apply the
right fix, odd ones a wrong one. Groups running at once count separately, so a group of 2k
rollouts always gets k of each (`rewards == [0, 0, 1, 1]` whatever the interleaving). Later turns
find their plan again in the assistant's own earlier message.
"""

from __future__ import annotations

import collections
import random
import re
import threading
from typing import Any

# task (recognised in the problem statement) -> (file, right fix, wrong fix) as (old, new) pairs
FIXES = {
    "calc.add": ("calc/ops.py", ("return a - b", "return a + b"), ("return a * b", "return a + b")),
    "slugify": (
        "textkit/slug.py",
        ('.strip("-")', '.strip("-").lower()'),
        ('.strip("-")', '.strip("-").upper()'),
    ),
    "EmptyStackError": (
        "stackx/stack.py",
        ("            return None", "            raise EmptyStackError()"),
        ("            return None", "            return 0"),
    ),
}


class FixingAgent:
    def __init__(self) -> None:
        self._started: collections.Counter[str] = collections.Counter()  # per task text
        self._lock = threading.Lock()

    def plan_for(self, task_text: str) -> str:
        """The next conversation's plan for this task: A, B, A, B, ..."""
        with self._lock:
            number = self._started[task_text]
            self._started[task_text] += 1
        return "A" if number % 2 == 0 else "B"

    def __call__(self, messages: list[dict[str, Any]], rng: random.Random) -> str:
        task = next(key for key in FIXES if key in str(messages[1]["content"]))
        path, right, wrong = FIXES[task]
        turns = [m for m in messages if m.get("role") == "assistant"]
        if not turns:
            plan = self.plan_for(str(messages[1]["content"]))
            return (
                f"Plan {plan}: read the code first.\n```python\nprint(open({path!r}).read())\n```"
            )
        plan = re.search(r"Plan (\w)", str(turns[0]["content"])).group(1)
        old, new = right if plan == "A" else wrong
        edit = (
            f"s = open({path!r}).read().replace({old!r}, {new!r}, 1)\nopen({path!r}, 'w').write(s)"
        )
        if task == "EmptyStackError" and plan == "A":
            edit += (
                f"\ns = open({path!r}).read()\n"
                "s = 'class EmptyStackError(IndexError):\\n    pass\\n\\n\\n' + s\n"
                f"open({path!r}, 'w').write(s)\n"
                "open('stackx/__init__.py', 'w')"
                ".write('from stackx.stack import EmptyStackError, Stack\\n')"
            )
        return f"Plan {plan}: apply the fix.\n```python\n{edit}\nfinish()\n```"


HOSTILE_TURNS = (
    "Let me ask for help.\n```repl\nhint = llm_query('How do I list files?')\nprint(hint)\n```",
    "```repl\nimport os\ntry:\n    while True:\n        os.fork()\n"
    "except OSError as e:\n    print('fork', e)\n```\n"
    "```python\ntry:\n    x = bytearray(8 * 1024**3)\n"
    "except MemoryError:\n    print('no memory')\n```",
    "```repl\nimport os, signal\nos.killpg(0, signal.SIGKILL)\n```",
    "```repl\nprint(open('/etc/shadow').read())\n```",
    "Done.\n```repl\nfinish()\n```",
)


def is_sub_agent(messages: list[dict[str, Any]]) -> bool:
    return "another agent" in str(messages[0].get("content"))


def hostile_agent(messages: list[dict[str, Any]], rng: random.Random) -> str:
    """Asks a sub-question, forks without limit, allocates 8 GB, kills its own process group,
    reads /etc/shadow, then finishes. Its sub-agent answers at once, without code."""
    if is_sub_agent(messages):
        return "Use list_files()."
    turn = sum(m.get("role") == "assistant" for m in messages)
    return HOSTILE_TURNS[min(turn, len(HOSTILE_TURNS) - 1)]


CRASH_LOG_ENV = "RLM_TEST_CRASH_LOG"  # a file each crashing_prompt call appends a line to


def crashing_prompt() -> str:
    """A system prompt function that crashes the whole job (each attempt logged)."""
    import os

    with open(os.environ[CRASH_LOG_ENV], "a") as log:
        log.write(f"{os.getpid()}\n")
    raise RuntimeError("scripted job crash")
