"""A rollout's working copy of the repository, and the diff of what the agent changed.

The copy comes from the repo cache (`python -m producer.repo_cache`), one fresh directory per
rollout under the system temp dir, named so the health monitor can reap strays. The diff is a
`git diff --binary`-style diff against the cached copy, paths relative to the repo.
"""

from __future__ import annotations

import os
import shutil
import stat
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


def _regular_files(root: Path) -> dict[str, Path]:
    """Regular files under `root` by relative path, found without following a symlink: a link,
    FIFO or device the agent made is never opened (a FIFO would block the read forever)."""
    files = {}
    for directory, subdirs, names in os.walk(root, followlinks=False):
        # Build metadata an install inside the sandbox leaves behind is not the agent's work (and
        # the grader would take a changed entry_points.txt for an attempt to register a plugin).
        subdirs[:] = [
            name for name in subdirs if name not in SKIPPED_PARTS and not name.endswith(".egg-info")
        ]
        for name in names:
            path = Path(directory, name)
            try:
                regular = stat.S_ISREG(path.lstat().st_mode)
            except OSError:
                continue
            if name.endswith(".pyc") or not regular:
                continue
            files[path.relative_to(root).as_posix()] = path
    return files


def _read(path: Path) -> bytes | None:
    """The file's bytes, or None when it is too large to be source or cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_DIFFED_BYTES:
            return None  # swapped for something else since listed, or data rather than source
        return file.read(_MAX_DIFFED_BYTES + 1)


def diff_against(original: Path | None, workdir: Path) -> str:
    """A `git diff --binary`-style diff turning `original` into `workdir`, paths relative to the
    repository. Bytes throughout: CRLF, odd line separators, non-UTF-8 content and non-UTF-8
    names all give a diff `git apply` reproduces byte for byte (common/diffs.py)."""
    before = _regular_files(original) if original is not None else {}
    after = _regular_files(workdir)
    sections = []
    for path in sorted(before.keys() | after.keys()):
        old = _read(before[path]) if path in before else None
        new = _read(after[path]) if path in after else None
        if (path in before and old is None) or (path in after and new is None):
            continue  # too large or unreadable on one side: leave the file as it was
        # Path.as_posix keeps undecodable name bytes as surrogates; fsencode restores them.
        sections.append(file_diff(os.fsencode(path), old, new))
    return "".join(sections)
