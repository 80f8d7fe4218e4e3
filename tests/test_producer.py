"""Scenarios from a local file in R2E-Gym-Lite's schema, and the step schedule."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from common.errors import TaskError
from producer import Schedule, load_tasks, task_from_row
from tests.dataset import r2e_row, write_r2e_jsonl

SECRET_COLUMNS = (
    "prompt",
    "parsed_commit_content",
    "execution_result_content",
    "expected_output_json",
)


def test_scenarios_hold_the_problem_statement_and_nothing_secret(tmp_path: Path) -> None:
    loaded = load_tasks(str(write_r2e_jsonl(tmp_path / "d.jsonl", 3)), "train")
    assert len(loaded.tasks) == 3 and loaded.skipped_rows == 0
    scenario = loaded.tasks[0].scenario
    row = r2e_row(0)
    assert scenario.instance_id == f"toyrepo__{row['commit_hash'][:12]}"
    assert scenario.problem_statement.startswith("Task 0:")
    assert "[ISSUE]" not in scenario.problem_statement
    dumped = json.dumps(scenario.model_dump())
    for column in SECRET_COLUMNS:
        assert row[column] not in dumped
    for test_key in json.loads(row["expected_output_json"]):
        assert test_key not in dumped
    assert loaded.tasks[0].grading.expected == json.loads(row["expected_output_json"])


def test_parquet_and_dataset_size(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list([r2e_row(i) for i in range(5)]).to_parquet(tmp_path / "d.parquet")
    loaded = load_tasks(str(tmp_path / "d.parquet"), "train", limit=2)
    assert [t.scenario.problem_statement[:6] for t in loaded.tasks] == ["Task 0", "Task 1"]


def test_malformed_rows_are_skipped_counted_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = {**r2e_row(9), "problem_statement": ""}
    not_json = {**r2e_row(10), "expected_output_json": "{oops"}
    path = write_r2e_jsonl(tmp_path / "d.jsonl", 2, extra=[empty, not_json])
    with caplog.at_level(logging.WARNING):
        loaded = load_tasks(str(path), "train")
    assert len(loaded.tasks) == 2 and loaded.skipped_rows == 2
    assert "dataset row 2 skipped: field 'problem_statement' is missing or empty" in caplog.text
    assert "dataset row 3 skipped: field 'expected_output_json' is not valid JSON" in caplog.text


def test_missing_file_and_wrong_schema_are_clear(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="no such file"):
        load_tasks(str(tmp_path / "absent.jsonl"), "train")
    (tmp_path / "other.jsonl").write_text(json.dumps({"text": "hi"}) + "\n")
    with pytest.raises(TaskError, match="is it R2E-Gym-Lite"):
        load_tasks(str(tmp_path / "other.jsonl"), "train")
    with pytest.raises(TaskError, match="'commit_hash'"):
        task_from_row({**r2e_row(0), "commit_hash": None})


def test_schedule_covers_each_epoch_once_and_resumes_exactly() -> None:
    tasks = [task_from_row(r2e_row(i)) for i in range(7)]
    schedule = Schedule(tasks, groups_per_step=2, num_epochs=2, seed=3)
    assert schedule.total_steps == 7
    steps = [schedule.tasks_for_step(k) for k in range(schedule.total_steps)]
    first_epoch = [t.scenario.instance_id for step in steps[:3] for t in step]
    assert len(set(first_epoch)) == 6  # no repeat inside an epoch
    resumed = Schedule(tasks, groups_per_step=2, num_epochs=2, seed=3)
    assert [resumed.tasks_for_step(k) for k in (4, 5)] == steps[4:6]
    reshuffled = Schedule(tasks, groups_per_step=2, num_epochs=2, seed=4)
    assert [reshuffled.tasks_for_step(k) for k in range(3)] != steps[:3]
    with pytest.raises(IndexError):
        schedule.tasks_for_step(7)


def test_a_directory_holds_a_file_per_split_and_a_file_holds_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_r2e_jsonl(data / "train.jsonl", rows=3)
    with open(data / "dev.jsonl", "w") as handle:
        handle.write(json.dumps(r2e_row(0, repo="devrepo")) + "\n")
    assert len(load_tasks(str(data), "train").tasks) == 3
    [dev] = load_tasks(str(data), "dev").tasks
    assert dev.scenario.instance_id.startswith("devrepo")
    with pytest.raises(TaskError, match="no test.jsonl or test.parquet"):
        load_tasks(str(data), "test")
    with pytest.raises(TaskError, match="one file, one split"):
        load_tasks(str(data / "train.jsonl"), "dev")


def test_over_provisioned_spares_are_other_tasks_and_the_same_after_a_restart() -> None:
    tasks = [task_from_row(r2e_row(i)) for i in range(10)]
    schedule = Schedule(tasks, groups_per_step=3, num_epochs=1, seed=4)
    for step in range(schedule.total_steps):
        own = {t.scenario.instance_id for t in schedule.tasks_for_step(step)}
        spares = [t.scenario.instance_id for t in schedule.extra_tasks(step, 2)]
        assert len(set(spares)) == 2 and not own & set(spares)
        again = Schedule(tasks, groups_per_step=3, num_epochs=1, seed=4).extra_tasks(step, 2)
        assert [t.scenario.instance_id for t in again] == spares
