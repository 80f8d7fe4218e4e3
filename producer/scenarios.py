"""Load R2E-Gym-Lite (hub id or a local parquet/JSONL file in its schema) into `Scenario`s.

Only the columns a scenario needs are read. Nothing that reveals the tests or the answer
(`prompt`, `parsed_commit_content`, `execution_result_content`, `expected_output_json`) goes
into a `Scenario`: it is what the agent's side of the pipeline sees.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import TaskError
from common.wire import Scenario

log = logging.getLogger(__name__)

COLUMNS = ("repo_name", "docker_image", "commit_hash", "problem_statement")
_ISSUE_TAGS = re.compile(r"\[/?ISSUE\]")


@dataclass(frozen=True)
class LoadedScenarios:
    scenarios: list[Scenario]
    skipped_rows: int


def instance_id(repo_name: str, commit_hash: str) -> str:
    return f"{repo_name}__{commit_hash[:12]}"


def scenario_from_row(row: Mapping[str, Any]) -> Scenario:
    """One dataset row -> a Scenario; TaskError names the field that is missing or wrong."""
    for column in COLUMNS:
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise TaskError(f"field {column!r} is missing or empty")
    problem = _ISSUE_TAGS.sub("", row["problem_statement"]).strip()
    if not problem:
        raise TaskError("field 'problem_statement' holds only [ISSUE] tags")
    return Scenario(
        instance_id=instance_id(row["repo_name"], row["commit_hash"]),
        problem_statement=problem,
        repo_name=row["repo_name"],
        docker_image=row["docker_image"],
    )


def scenarios_from_rows(rows: Iterable[Mapping[str, Any]], limit: int | None) -> LoadedScenarios:
    """Rows -> scenarios; a malformed row is logged once, counted and skipped."""
    scenarios: list[Scenario] = []
    skipped = 0
    for index, row in enumerate(rows):
        if limit is not None and len(scenarios) >= limit:
            break
        try:
            scenarios.append(scenario_from_row(row))
        except TaskError as exc:
            skipped += 1
            log.warning("dataset row %d skipped: %s", index, exc)
    return LoadedScenarios(scenarios, skipped)


def load_scenarios(dataset: str, split: str, limit: int | None = None) -> LoadedScenarios:
    """Load scenarios from the HF hub id `dataset`, or from a local .parquet/.jsonl file."""
    import datasets  # heavy: imported only by the process that loads data

    path = Path(dataset)
    if path.suffix in (".parquet", ".jsonl", ".json"):
        if not path.exists():
            raise TaskError(f"--dataset {dataset}: no such file; give a hub id or an existing file")
        builder = "parquet" if path.suffix == ".parquet" else "json"
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    else:
        table = datasets.load_dataset(dataset, split=split, columns=list(COLUMNS))
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise TaskError(f"--dataset {dataset}: columns {missing} missing; is it R2E-Gym-Lite?")
    table = table.select_columns(list(COLUMNS))
    loaded = scenarios_from_rows(table, limit)
    if not loaded.scenarios:
        raise TaskError(f"--dataset {dataset}: no usable rows ({loaded.skipped_rows} skipped)")
    log.info("loaded %d scenarios (%d rows skipped)", len(loaded.scenarios), loaded.skipped_rows)
    return loaded
