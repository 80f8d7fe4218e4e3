"""System prompts. Swap one in with `config.system_prompt_fn = r2e_cot_system_prompt` or
`--system-prompt-fn common.prompts:r2e_cot_system_prompt`. A prompt function takes no argument
and returns the system message text; workers import it by its path, so custom ones must be
importable on the worker machines too."""

from __future__ import annotations

_TOOLS = """\
You work in a Python REPL whose current directory is a working copy of the repository.
Write code in fenced ```python blocks (```repl works too); each block runs in order and you see
its output in the next message. Call `finish()` in a code block when the fix is done.
Only the problem statement is given; explore the repository to find what to change."""


def r2e_system_prompt() -> str:
    return (
        "You are an expert software engineer fixing an issue in a Python repository.\n\n" + _TOOLS
    )


def r2e_cot_system_prompt() -> str:
    return (
        "You are an expert software engineer fixing an issue in a Python repository.\n"
        "Before each code block, think step by step: state what you know, what you will check "
        "next and why. Reproduce the bug before changing code, then verify your fix.\n\n" + _TOOLS
    )


def task_message(problem_statement: str) -> str:
    """The first user message: the problem statement and nothing else about the task."""
    return f"Fix the following issue in the repository.\n\n{problem_statement.strip()}"
