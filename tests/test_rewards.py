"""R2E-Gym's parser and rewards on real `pytest -rA` output, produced here by running pytest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.rewards import (
    RewardInput,
    binary_test_reward,
    exact_match,
    finished_reward,
    parse_pytest_log,
    partial_test_reward,
    split_tests,
)

TESTS = {
    "r2e_tests/test_math.py": (
        "import pytest\n\n"
        "def test_ok():\n    assert True\n\n"
        "def test_bad():\n    assert 1 == 2, 'expected PASSED but got FAILED'\n\n"
        "@pytest.mark.parametrize('n', [1, 2, 'a b'])\n"
        "def test_param(n):\n    assert n != 2\n\n"
        "class TestGroup:\n    def test_inner(self):\n        assert True\n\n"
        "@pytest.mark.skip(reason='not today')\ndef test_skipped():\n    pass\n\n"
        "@pytest.mark.xfail\ndef test_xfail():\n    assert False\n\n"
        "@pytest.fixture\ndef broken():\n    raise RuntimeError('fixture ERROR')\n\n"
        "def test_fixture_error(broken):\n    pass\n"
    ),
}


def run_pytest(tmp_path: Path, files: dict[str, str], *args: str) -> str:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "pytest", "-rA", "-p", "no:cacheprovider",
         *args, "r2e_tests"],
        cwd=tmp_path, capture_output=True, text=True,
        env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    return result.stdout


@pytest.fixture
def real_log(tmp_path: Path) -> str:
    return run_pytest(tmp_path, TESTS)


def test_parser_keys_and_statuses_on_real_output(real_log: str) -> None:
    parsed = parse_pytest_log(real_log)
    assert parsed["test_ok"] == "PASSED"
    assert parsed["test_param[1]"] == "PASSED"
    assert parsed["test_param[2]"] == "FAILED"
    assert parsed["test_param[a b]"] == "PASSED"  # ids with spaces keep their brackets
    assert parsed["TestGroup.test_inner"] == "PASSED"
    assert parsed["test_fixture_error"] == "ERROR"
    assert "test_skipped" not in parsed and "test_xfail" not in parsed
    # R2E-Gym looks for PASSED anywhere in the line: a FAILED test whose message says PASSED
    # counts as passed there, and the dataset's expected outputs were made that way.
    assert parsed["test_bad"] == "PASSED"
    assert all(" - " not in key for key in parsed)


def test_collection_errors_give_the_empty_key(tmp_path: Path) -> None:
    log = run_pytest(tmp_path, {"r2e_tests/test_x.py": "import not_a_module_at_all\n"})
    assert "short test summary info" in log
    assert parse_pytest_log(log) == {"": "ERROR"}
    assert parse_pytest_log("no summary here\nPASSED x::y") == {}
    assert parse_pytest_log(None) == {}


def test_exact_reward_needs_every_status_and_the_same_count() -> None:
    expected = {"test_a": "PASSED", "test_b": "FAILED", "T.test_c[1]": "PASSED"}
    outcome = RewardInput(finished=True, truncated=False, steps=3, expected=expected)
    assert binary_test_reward(_with(outcome, dict(expected))) == 1.0
    assert binary_test_reward(_with(outcome, {**expected, "test_b": "PASSED"})) == 0.0  # must fail
    assert binary_test_reward(_with(outcome, {**expected, "test_extra": "PASSED"})) == 0.0
    assert binary_test_reward(_with(outcome, {"test_a": "PASSED", "test_b": "FAILED"})) == 0.0
    coloured = {"\x1b[1mtest_a\x1b[0m": "PASSED", "test_b - msg": "FAILED", "T.test_c[1]": "PASSED"}
    assert exact_match(coloured, expected)
    with pytest.raises(ValueError, match="--grader docker"):
        binary_test_reward(outcome)


def test_partial_reward_counts_fixed_tests_and_punishes_regressions(tmp_path: Path) -> None:
    expected = {
        "test_new1": "PASSED",
        "test_new2": "PASSED",
        "test_old": "PASSED",
        "test_known": "FAILED",
    }
    old_log = run_pytest(
        tmp_path,
        {"r2e_tests/test_t.py": "def test_new1(): assert 0\ndef test_new2(): assert 0\n"
         "def test_old(): pass\ndef test_known(): assert 0\n"},
    )  # fmt: skip
    fail_to_pass, pass_to_pass = split_tests(expected, old_log)
    assert (fail_to_pass, pass_to_pass) == (["test_new1", "test_new2"], ["test_old"])
    base = RewardInput(
        finished=True, truncated=False, steps=1, expected=expected,
        fail_to_pass=tuple(fail_to_pass), pass_to_pass=tuple(pass_to_pass),
    )  # fmt: skip
    no_op = {
        "test_new1": "FAILED",
        "test_new2": "FAILED",
        "test_old": "PASSED",
        "test_known": "FAILED",
    }
    half = {**no_op, "test_new1": "PASSED"}
    regressed = {**half, "test_new2": "PASSED", "test_old": "FAILED"}
    assert partial_test_reward(_with(base, no_op)) == 0.0  # a no-op edit earns nothing
    assert partial_test_reward(_with(base, half)) == 0.5
    assert partial_test_reward(_with(base, {**half, "test_new2": "PASSED"})) == 1.0
    assert partial_test_reward(_with(base, regressed)) == 0.0


def test_finished_reward_reads_only_the_finish_signal() -> None:
    assert finished_reward(RewardInput(finished=True, truncated=False, steps=1)) == 1.0
    assert finished_reward(RewardInput(finished=False, truncated=True, steps=15)) == 0.0


def _with(outcome: RewardInput, results: dict[str, str]) -> RewardInput:
    return RewardInput(**{**outcome.__dict__, "test_results": results})


def test_a_tampering_diff_is_never_paid_whatever_the_reward_function() -> None:
    """The worker's score(): a report flagged `tampered` pays 0.0 even through a custom reward
    function that ignores the flag, and the trajectory carries the flag and what was touched."""
    import asyncio

    from common.grading import GradeReport, GradeTimings
    from common.wire import GradingSpec
    from rollout_workers.job import score
    from rollout_workers.rollout import RolloutOutcome
    from tests.jobs import rollout_job

    expected = {"test_add": "PASSED"}

    class TamperedGrader:  # the real grader's answer to a diff that adds a conftest.py
        async def grade(self, request: object) -> GradeReport:
            return GradeReport(
                instance_id="calc", statuses=expected, timed_out=False, exit_code=0,
                tampered=True, tamper=["test runner input: conftest.py"], log_tail="",
                timings=GradeTimings(total_s=1.0, queued_s=0.0, tests_s=0.5),
            )  # fmt: skip

    job = rollout_job(
        instance_id="calc",
        grading=GradingSpec(docker_image="rlm-fixtures/calc_final:x", expected=expected),
    )
    outcome = RolloutOutcome(finished=True, steps=1, diff="diff --git a/conftest.py ...")
    always_pays = lambda _: 1.0  # noqa: E731 (a careless custom reward function)
    trajectory = asyncio.run(score(job, outcome, TamperedGrader(), always_pays))  # type: ignore[arg-type]
    assert trajectory.reward == 0.0
    assert trajectory.metrics["tampered"] is True and trajectory.metrics["success"] is False
    assert trajectory.metadata["tamper"] == "test runner input: conftest.py"
    tampered = RewardInput(True, False, 1, expected, expected, tampered=True)
    assert binary_test_reward(tampered) == 0.0 and partial_test_reward(tampered) == 0.0
