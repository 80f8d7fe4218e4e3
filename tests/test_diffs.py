"""The worker's diff reproduces every file byte for byte through `git apply`: CRLF, the
characters `str.splitlines` splits at, non-UTF-8 content and names, binary files, deletions."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from common.diffs import file_diff, quote_path
from rollout_workers.workdir import diff_against

ODD_TEXTS = {
    "crlf.py": b"a = 1\r\nb = 2\r\nc = 3\r\n",
    "formfeed.py": b"x = 1\n\x0c\ny = 2\n",
    "separators.txt": b"one\x1ctwo\x1dthree\x1efour\n",
    "nel.txt": "caf\u00e9\u0085next\u2028line\u2029para\n".encode(),
    "lone_cr.txt": b"mac\rstyle\rlines\r",
    "no_newline.py": b"last = True",
    "latin1.py": b"# -*- coding: latin-1 -*-\nname = '\xe9t\xe9'\n",
    "data.bin": bytes(range(256)) * 8,
}


def _files(root: Path) -> dict[str, bytes]:
    return {
        os.fsdecode(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.parts
    }


def _git_apply(repo: Path, diff: str) -> None:
    (repo.parent / "agent.diff").write_bytes(diff.encode("utf-8"))
    result = subprocess.run(
        ["git", "apply", "--whitespace=nowarn", str(repo.parent / "agent.diff")],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def _repo(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def _edit(data: bytes) -> bytes:
    # Insert after the first line, keeping whatever line endings and bytes the file has (text
    # stays text, so the text path of the diff is what gets tested for text files).
    cut = data.find(b"\n") + 1
    return data[:cut] + "EDIT \u2028 \x0c\r\n".encode() + data[cut:]


@pytest.mark.parametrize("name", sorted(ODD_TEXTS))
def test_edits_to_odd_files_round_trip_through_git_apply(tmp_path: Path, name: str) -> None:
    original = _repo(tmp_path / "original", {name: ODD_TEXTS[name], "keep.txt": b"keep\n"})
    work = tmp_path / "work"
    shutil.copytree(original, work, ignore=shutil.ignore_patterns(".git"))
    (work / name).write_bytes(_edit(ODD_TEXTS[name]))
    (work / f"new_{name}").write_bytes(ODD_TEXTS[name])
    (work / "keep.txt").unlink()
    diff = diff_against(original, work)
    diff.encode("utf-8")  # travels as JSON text: no raw bytes smuggled in as surrogates
    assert ("GIT binary patch" in diff) == (name in {"latin1.py", "data.bin"})
    _git_apply(original, diff)
    assert _files(original) == _files(work)


def test_non_utf8_and_odd_file_names_round_trip(tmp_path: Path) -> None:
    names = [
        b"caf\xe9.py",
        b"sp ace.py",
        b'quo"te.py',
        b"back\\slash.py",
        b"tab\tname.py",
        "ünï.py".encode(),
    ]
    original = _repo(tmp_path / "original", {"base.py": b"x\n"})
    work = tmp_path / "work"
    shutil.copytree(original, work, ignore=shutil.ignore_patterns(".git"))
    for raw in names:
        (Path(os.fsdecode(bytes(work))) / os.fsdecode(raw)).write_bytes(b"print(1)\n")
    diff = diff_against(original, work)
    diff.encode("ascii")  # every odd name is quoted
    _git_apply(original, diff)
    assert _files(original) == _files(work)
    assert quote_path(b"a/caf\xe9.py") == '"a/caf\\351.py"'


def test_unchanged_empty_and_special_files(tmp_path: Path) -> None:
    original = _repo(tmp_path / "original", {"empty.py": b"", "same.py": b"same\n"})
    work = tmp_path / "work"
    shutil.copytree(original, work, ignore=shutil.ignore_patterns(".git"))
    assert diff_against(original, work) == ""
    (work / "new_empty.py").write_bytes(b"")
    os.mkfifo(work / "fifo")  # would block a reader forever: must never be opened
    (work / "calc.egg-info").mkdir()  # left by `pip install -e .` in the sandbox: not work
    (work / "calc.egg-info" / "entry_points.txt").write_text("[pytest11]\n")
    (work / "link.py").symlink_to("/etc/passwd")  # never followed
    diff = diff_against(original, work)
    assert "fifo" not in diff and "link.py" not in diff and "egg-info" not in diff
    _git_apply(original, diff)
    assert (original / "new_empty.py").read_bytes() == b""
    assert file_diff("x.py", b"a\n", b"a\n") == ""
