"""Load R2E-Gym-Lite (hub id or a local parquet/JSONL file in its schema) into `Task`s.

Only the columns a task needs are read. A task is two halves that travel separately: the
`Scenario` (what the agent may see: the problem statement) and the `GradingSpec` (expected test
statuses and the fail-to-pass / pass-to-pass split, derived here, offline). `prompt` and
`parsed_commit_content` are never read; nothing from the grading columns enters a `Scenario`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import TaskError
from common.rewards import split_tests
from common.wire import GradingSpec, Scenario

log = logging.getLogger(__name__)

COLUMNS = (
    "repo_name",
    "docker_image",
    "commit_hash",
    "problem_statement",
    "expected_output_json",
    "execution_result_content",
)
_ISSUE_TAGS = re.compile(r"\[/?ISSUE\]")


@dataclass(frozen=True)
class Task:
    scenario: Scenario
    grading: GradingSpec


@dataclass(frozen=True)
class LoadedTasks:
    tasks: list[Task]
    skipped_rows: int


def instance_id(repo_name: str, commit_hash: str) -> str:
    return f"{repo_name}__{commit_hash[:12]}"


def task_from_row(row: Mapping[str, Any]) -> Task:
    """One dataset row -> a Task; TaskError names the field that is missing or wrong."""
    for column in COLUMNS:
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise TaskError(f"field {column!r} is missing or empty")
    problem = _ISSUE_TAGS.sub("", row["problem_statement"]).strip()
    if not problem:
        raise TaskError("field 'problem_statement' holds only [ISSUE] tags")
    expected = _json_object(row, "expected_output_json")
    execution = _json_object(row, "execution_result_content")
    if not expected or not all(isinstance(v, str) for v in expected.values()):
        raise TaskError("field 'expected_output_json' is not a map of test -> status")
    fail_to_pass, pass_to_pass = split_tests(
        expected, str(execution.get("old_commit_res_stdout") or "")
    )
    return Task(
        scenario=Scenario(
            instance_id=instance_id(row["repo_name"], row["commit_hash"]),
            problem_statement=problem,
            repo_name=row["repo_name"],
        ),
        grading=GradingSpec(
            docker_image=row["docker_image"],
            expected=expected,
            fail_to_pass=fail_to_pass,
            pass_to_pass=pass_to_pass,
        ),
    )


def _json_object(row: Mapping[str, Any], column: str) -> dict[str, Any]:
    try:
        value = json.loads(row[column])
    except ValueError as exc:
        raise TaskError(f"field {column!r} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise TaskError(f"field {column!r} is not a JSON object")
    return value


def tasks_from_rows(rows: Iterable[Mapping[str, Any]], limit: int | None) -> LoadedTasks:
    """Rows -> tasks; a malformed row is logged once, counted and skipped."""
    tasks: list[Task] = []
    skipped = 0
    for index, row in enumerate(rows):
        if limit is not None and len(tasks) >= limit:
            break
        try:
            tasks.append(task_from_row(row))
        except TaskError as exc:
            skipped += 1
            log.warning("dataset row %d skipped: %s", index, exc)
    return LoadedTasks(tasks, skipped)


LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json")


def load_rows(dataset: str, split: str, columns: Iterable[str] = COLUMNS) -> Any:
    """The dataset as a `datasets.Dataset` holding only `columns`."""
    import datasets  # heavy: imported only by the process that loads data

    path = Path(dataset)
    if path.is_dir():  # a local dataset with a file per split, as on the hub
        files = [p for p in sorted(path.glob(f"{split}.*")) if p.suffix in LOCAL_SUFFIXES]
        if not files:
            raise TaskError(
                f"--dataset {dataset}: no {split}.jsonl or {split}.parquet in it (one file per "
                "split)"
            )
        path = files[0]
    elif path.suffix in LOCAL_SUFFIXES and split != "train":
        raise TaskError(
            f"--dataset {dataset} is one file, one split: for split {split!r} give a directory "
            f"holding train.jsonl and {split}.jsonl"
        )
    if path.suffix in LOCAL_SUFFIXES:
        if not path.exists():
            raise TaskError(f"--dataset {dataset}: no such file; give a hub id or an existing file")
        builder = "parquet" if path.suffix == ".parquet" else "json"
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    else:
        table = datasets.load_dataset(dataset, split=split, columns=list(columns))
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise TaskError(f"--dataset {dataset}: columns {missing} missing; is it R2E-Gym-Lite?")
    return table.select_columns(list(columns))


def load_tasks(dataset: str, split: str, limit: int | None = None) -> LoadedTasks:
    """Load tasks from the HF hub id `dataset`, a local .parquet/.jsonl file (one split: train)
    or a local directory of `<split>.jsonl`/`<split>.parquet` files."""
    loaded = tasks_from_rows(load_rows(dataset, split), limit)
    if not loaded.tasks:
        raise TaskError(f"--dataset {dataset}: no usable rows ({loaded.skipped_rows} skipped)")
    log.info("loaded %d tasks (%d rows skipped)", len(loaded.tasks), loaded.skipped_rows)
    return loaded
