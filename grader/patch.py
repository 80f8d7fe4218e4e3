"""Which parts of an agent's diff the grader applies.

The agent may change the repository, never what grades it: the hidden tests (`r2e_tests/`),
`run_tests.sh`, a root `conftest.py` or `pytest.ini`, the virtualenv or git's own files. Those
file sections are dropped from the diff (and reported), the rest is applied as it is.
"""

from __future__ import annotations

import re

_FILE_HEADER = re.compile(r"^diff --git a/(\S+) b/(\S+)", re.MULTILINE)
PROTECTED_PREFIXES = ("r2e_tests/", ".venv/", ".git/")
PROTECTED_FILES = ("run_tests.sh", "conftest.py", "pytest.ini", "r2e_tests")


def is_protected(path: str) -> bool:
    return path in PROTECTED_FILES or path.startswith(PROTECTED_PREFIXES)


def filter_diff(diff: str) -> tuple[str, list[str]]:
    """(the diff without protected files, the protected paths it tried to change)."""
    starts = [match.start() for match in _FILE_HEADER.finditer(diff)]
    if not starts:
        return diff, []
    kept, ignored = [diff[: starts[0]]], []
    for begin, end in zip(starts, [*starts[1:], len(diff)], strict=True):
        section = diff[begin:end]
        match = _FILE_HEADER.match(section)
        assert match is not None
        paths = {match.group(1), match.group(2)}
        if any(is_protected(path) for path in paths):
            ignored.extend(sorted(paths))
        else:
            kept.append(section)
    return "".join(kept), sorted(set(ignored))
