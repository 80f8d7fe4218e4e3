"""Small datasets in R2E-Gym-Lite's exact schema (every column, same types), built locally."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def r2e_row(index: int, repo: str = "toyrepo") -> dict[str, Any]:
    commit = hashlib.sha1(f"{repo}-{index}".encode()).hexdigest()
    test_key = f"r2e_tests/test_{index}.py::test_case_{index}"
    return {
        "repo_name": repo,
        "docker_image": f"namanjain12/{repo}_final:{commit}",
        "commit_hash": commit,
        "parsed_commit_content": json.dumps({"file_diffs": [], "old_commit_hash": commit[::-1]}),
        "execution_result_content": json.dumps(
            {
                "test_file_names": [f"test_{index}.py"],
                "test_file_codes": ["def test(): pass"],
                "old_commit_res_stdout": "",
                "new_commit_res_stdout": "",
            }
        ),
        "modified_files": ["toy/module.py"],
        "modified_entity_summaries": [],
        "relevant_files": ["toy/module.py"],
        "num_non_test_files": 1,
        "num_non_test_func_methods": 1,
        "num_non_test_lines": 3,
        "prompt": "contains the hidden tests: never shown to the agent",
        "problem_statement": f"[ISSUE]\nTask {index}: `add()` returns the wrong value.\n[/ISSUE]",
        "expected_output_json": json.dumps(
            {f"test_{index}.test_case_{index}": "PASSED", "_key": test_key}
        ),
    }


def write_r2e_jsonl(path: Path, rows: int, extra: list[dict[str, Any]] | None = None) -> Path:
    with open(path, "w") as handle:
        for index in range(rows):
            handle.write(json.dumps(r2e_row(index)) + "\n")
        for row in extra or []:
            handle.write(json.dumps(row) + "\n")
    return path
