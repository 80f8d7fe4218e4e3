"""Unified diffs in `git diff` form, as the grader applies them (`git apply`, paths a/ b/)."""

from __future__ import annotations

import difflib


def file_diff(path: str, old: list[str] | None, new: list[str] | None) -> str:
    """One `diff --git` section turning `old` into `new` (lines with their endings; None: the
    file does not exist on that side). Empty when nothing changed."""
    if old == new:
        return ""
    old_name = f"a/{path}" if old is not None else "/dev/null"
    new_name = f"b/{path}" if new is not None else "/dev/null"
    body = "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
        for line in difflib.unified_diff(old or [], new or [], old_name, new_name)
    )
    if not body:
        return ""
    mode = ""
    if old is None:
        mode = "new file mode 100644\n"
    elif new is None:
        mode = "deleted file mode 100644\n"
    return f"diff --git a/{path} b/{path}\n{mode}{body}"
