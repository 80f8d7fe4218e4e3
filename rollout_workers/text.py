"""What the loop reads from a model reply and writes back: code blocks in, truncated output out."""

from __future__ import annotations

import re

_CODE_BLOCK = re.compile(r"```(?:python|repl)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code_blocks(text: str) -> list[str]:
    return [block for block in _CODE_BLOCK.findall(text) if block.strip()]


def truncate_middle(text: str, limit: int) -> str:
    """Keep the head and the tail: errors usually sit at the end, context at the start."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters cut] ...\n{text[-half:]}"


def observation(outputs: list[str], nudge: str) -> str:
    return "\n\n".join(f"Output:\n{o or '(no output)'}" for o in outputs) or nudge
