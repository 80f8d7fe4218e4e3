"""A rollout's working copy of the repository, and the diff of what the agent changed.

The copy comes from the repo cache (`python -m producer.repo_cache`), one fresh directory per
rollout under the system temp dir, named so the health monitor can reap strays. The diff is a
`git diff`-style unified diff of text files against the cached copy, paths relative to the repo.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from common.diffs import file_diff
from common.errors import SandboxError
from common.health import ROLLOUT_DIR_PREFIX
from common.repo_cache import SKIPPED_PARTS, cached_repo

_MAX_DIFFED_BYTES = 2_000_000  # larger files are data, not source: left out of the diff


def rollout_dir_prefix() -> str:
    """Per worker process, so a worker can remove its own directories when stopped."""
    return f"{ROLLOUT_DIR_PREFIX}{os.getpid()}-"


def make_working_copy(cache_dir: str, instance_id: str) -> tuple[Path, Path | None]:
    """(a fresh working directory, the cached repository it was copied from or None).

    Without a cache dir the rollout starts in an empty directory (smoke runs)."""
    source = cached_repo(cache_dir, instance_id) if cache_dir else None
    if cache_dir and source is None:
        raise SandboxError(
            f"{instance_id} is not in the repo cache {cache_dir}: run "
            f"`python -m producer.repo_cache --cache-dir {cache_dir}` on this machine"
        )
    root = Path(tempfile.mkdtemp(prefix=rollout_dir_prefix()))
    workdir = root / "repo"
    if source is None:
        workdir.mkdir()
    else:
        shutil.copytree(source, workdir, symlinks=True)
    return workdir, source


def _text_files(root: Path) -> dict[str, Path]:
    files = {}
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part in SKIPPED_PARTS for part in relative.parts) or path.suffix == ".pyc":
            continue
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= _MAX_DIFFED_BYTES:
            files[relative.as_posix()] = path
    return files


def _read_lines(path: Path) -> list[str] | None:
    try:
        return path.read_text().splitlines(keepends=True)
    except (UnicodeDecodeError, OSError):
        return None  # binary or unreadable: not part of a text diff


def diff_against(original: Path | None, workdir: Path) -> str:
    """Unified diff (`diff --git a/p b/p` sections) turning `original` into `workdir`."""
    before = _text_files(original) if original is not None else {}
    after = _text_files(workdir)
    sections = []
    for path in sorted(before.keys() | after.keys()):
        old = _read_lines(before[path]) if path in before else None
        new = _read_lines(after[path]) if path in after else None
        if (path in before and old is None) or (path in after and new is None):
            continue  # binary or unreadable on one side: not part of a text diff
        sections.append(file_diff(path, old, new))
    return "".join(sections)
