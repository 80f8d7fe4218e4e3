"""Build the fixture tasks: real git repositories, task images built like R2E-Gym's, and dataset
rows in R2E-Gym-Lite's exact schema whose expected outputs come from really running the tests.

    python -m tests.tasks.build --out /tmp/r2e-fixtures    # prints the dataset path

Images: `rlm-fixtures/<repo>_final:<fix commit>` on top of the debootstrap base image
(docker/build_base_image.sh): the repository at /testbed at the buggy (parent) commit with
the fix still reachable in git, its own virtualenv at /testbed/.venv (pytest installed offline
from wheels downloaded on the host), the hidden tests at /r2e_tests and /testbed/run_tests.sh.
Every container runs with --network none. Images are reused when their tag exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.rewards import parse_pytest_log
from tests.tasks.specs import ALL, TaskSpec

BASE_IMAGE = "rlm-base:bookworm"
RUN_TESTS = ".venv/bin/python -W ignore -m pytest -rA r2e_tests\n"
PYTEST_REQUIREMENT = "pytest>=8,<9"
WHEELS_DIR = Path(os.environ.get("RLM_WHEELS_DIR", Path.home() / ".cache" / "rlm-fixture-wheels"))
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "R2E Fixture",
    "GIT_AUTHOR_EMAIL": "fixture@example.com",
    "GIT_COMMITTER_NAME": "R2E Fixture",
    "GIT_COMMITTER_EMAIL": "fixture@example.com",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
}


@dataclass(frozen=True)
class BuiltTask:
    row: dict[str, Any]  # the dataset row
    image: str
    gold_diff: str


def _run(command: list[str], cwd: Path | None = None, stdin: str | None = None) -> str:
    result = subprocess.run(
        command,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **_GIT_ENV},
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}): {result.stderr[-2000:]}"
        )
    return result.stdout


def _write(root: Path, files: dict[str, str]) -> None:
    for path, content in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


def download_wheels() -> Path:
    """pytest and its dependencies as wheels on the host: pip inside a container has no network.

    pip comes from uv's own tool environment: the project venv (made by uv) has none, and the
    machine's `python3` under `uv run` is that venv. The wheels are chosen for the image's Python
    (Debian bookworm: CPython 3.11), not the host's."""
    WHEELS_DIR.mkdir(parents=True, exist_ok=True)
    if not any(WHEELS_DIR.glob("pytest-8*.whl")):
        _run(
            [
                "uv",
                "tool",
                "run",
                "--quiet",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                "--python-version",
                "3.11",
                "--dest",
                str(WHEELS_DIR),
                PYTEST_REQUIREMENT,
            ]
        )
    return WHEELS_DIR


def make_repo(spec: TaskSpec, root: Path) -> tuple[str, str, str]:
    """A git repository at the buggy commit whose fix commit stays reachable (as in R2E-Gym's
    images). Returns (parent hash, fix hash, gold diff)."""
    root.mkdir(parents=True)
    _run(["git", "init", "--quiet", "--initial-branch=main"], root)
    _write(root, spec.buggy)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "--quiet", "-m", f"{spec.repo}: initial"], root)
    parent = _run(["git", "rev-parse", "HEAD"], root).strip()
    _write(root, spec.fixed)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "--quiet", "-m", f"{spec.repo}: fix"], root)
    fix = _run(["git", "rev-parse", "HEAD"], root).strip()
    gold_diff = _run(["git", "diff", parent, fix], root)
    _run(["git", "checkout", "--quiet", parent], root)
    return parent, fix, gold_diff


def build_image(spec: TaskSpec, repo: Path, image: str, wheels: Path, context: Path) -> None:
    (context / "r2e_tests").mkdir(parents=True)
    _write(context / "r2e_tests", spec.tests)
    (repo / "run_tests.sh").write_text(RUN_TESTS)
    _run(["cp", "-a", str(repo), str(context / "testbed")])
    _run(["cp", "-a", str(wheels), str(context / "wheels")])
    (context / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\n"
        "COPY wheels /tmp/wheels\n"
        "COPY testbed /testbed\n"
        "COPY r2e_tests /r2e_tests\n"
        "RUN python3 -m venv /testbed/.venv \\\n"
        "    && /testbed/.venv/bin/pip install --quiet --no-index \\\n"
        "       --find-links /tmp/wheels pytest \\\n"
        "    && rm -rf /tmp/wheels\n"
        "WORKDIR /testbed\n"
    )
    _run(["docker", "build", "--quiet", "--network", "none", "-t", image, str(context)])


def run_hidden_tests(image: str, diff: str) -> str:
    """The hidden tests' pytest log in a fresh container, after applying `diff`."""
    script = (
        "cd /testbed && cat > /tmp/gold.diff "
        "&& { [ ! -s /tmp/gold.diff ] || git apply --whitespace=nowarn /tmp/gold.diff; } "
        "&& cp -r /r2e_tests r2e_tests && bash run_tests.sh 2>&1; true"
    )
    return _run(
        ["docker", "run", "--rm", "-i", "--network", "none", image, "bash", "-c", script],
        stdin=diff,
    )


def build_task(spec: TaskSpec, workdir: Path, wheels: Path) -> BuiltTask:
    parent, fix, gold_diff = make_repo(spec, workdir / spec.repo / "repo")
    # The tag names the fix commit, as R2E-Gym's do, plus what else goes into the image.
    recipe = json.dumps([spec.tests, RUN_TESTS, sorted(p.name for p in wheels.iterdir())])
    image = (
        f"rlm-fixtures/{spec.repo}_final:{fix[:16]}-{hashlib.sha1(recipe.encode()).hexdigest()[:8]}"
    )
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
        build_image(
            spec, workdir / spec.repo / "repo", image, wheels, workdir / spec.repo / "context"
        )
    old_log = run_hidden_tests(image, "")
    new_log = run_hidden_tests(image, gold_diff)
    changed = sorted(spec.fixed)
    row = {
        "repo_name": spec.repo,
        "docker_image": image,
        "commit_hash": fix,
        "parsed_commit_content": json.dumps(
            {
                "file_diffs": [
                    {
                        "header": {"file": {"path": path}, "misc_line": None},
                        "index_line": None,
                        "is_binary_file": False,
                        "binary_line": None,
                        "minus_file": {"path": f"a/{path}"},
                        "plus_file": {"path": f"b/{path}"},
                        "hunks": [],
                        "old_file_content": spec.buggy.get(path, ""),
                        "new_file_content": spec.fixed[path],
                    }
                    for path in changed
                ],
                "old_commit_hash": parent,
                "new_commit_hash": fix,
                "commit_message": f"{spec.repo}: fix",
                "commit_date": _GIT_ENV["GIT_COMMITTER_DATE"],
                "metadata": {},
            }
        ),
        "execution_result_content": json.dumps(
            {
                "test_file_names": sorted(spec.tests),
                "test_file_codes": [spec.tests[name] for name in sorted(spec.tests)],
                "old_commit_res_stdout": old_log,
                "new_commit_res_stdout": new_log,
            }
        ),
        "modified_files": changed,
        "modified_entity_summaries": [],
        "relevant_files": changed,
        "num_non_test_files": len(changed),
        "num_non_test_func_methods": 1,
        "num_non_test_lines": sum(line.startswith(("+", "-")) for line in gold_diff.splitlines()),
        "prompt": f"Hidden tests: {sorted(spec.tests)}. Solution: {gold_diff}",
        "problem_statement": f"[ISSUE]\n{spec.problem}\n[/ISSUE]",
        "expected_output_json": json.dumps(parse_pytest_log(new_log)),
    }
    return BuiltTask(row, image, gold_diff)


def build_all(out: Path) -> tuple[Path, list[BuiltTask]]:
    """Build every fixture task; returns the parquet dataset path and the tasks."""
    import datasets

    wheels = download_wheels()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        built = [build_task(spec, Path(workdir), wheels) for spec in ALL]
    path = out / "r2e_fixtures.parquet"
    datasets.Dataset.from_list([task.row for task in built]).to_parquet(path)
    return path, built


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    path, _ = build_all(parser.parse_args().out)
    print(path)  # noqa: T201


if __name__ == "__main__":
    main()
