"""Reward functions: pure functions of a rollout's outcome, and R2E-Gym's log parser.

A reward function takes a `RewardInput` and returns a float. Swap one in with
`config.reward_fn = ...` or `--reward-fn module:function`; workers import it by that path.

`parse_pytest_log` and `binary_test_reward` reproduce R2E-Gym's parser and exact reward, quirks
included, because the dataset's expected outputs were made with that parser: a summary line is
classified by the first of PASSED, FAILED, ERROR found anywhere in it, so a FAILED test whose
message mentions "PASSED" counts as passed there, and must here too for rewards to agree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

SUMMARY_HEADER = "short test summary info"
STATUSES = ("PASSED", "FAILED", "ERROR")
_ANSI_COLOR = re.compile(r"\x1b\[\d+m")


@dataclass(frozen=True)
class RewardInput:
    """What a reward function may look at once a rollout has ended."""

    finished: bool  # the agent called finish()
    truncated: bool  # the rollout hit --max-steps or --max-context-tokens
    steps: int
    # Per-test statuses from the grader (None when grading is off, `--grader none`).
    test_results: dict[str, str] | None = None
    expected: dict[str, str] = field(default_factory=dict)
    fail_to_pass: tuple[str, ...] = ()
    pass_to_pass: tuple[str, ...] = ()
    # The grader found the diff changing how the tests run (GradeReport.tampered). Never paid:
    # the worker's score() enforces 0.0 whatever the reward function returns.
    tampered: bool = False


def parse_pytest_log(log: str | None) -> dict[str, str]:
    """`pytest -rA` output -> {test key: PASSED | FAILED | ERROR}, keyed as R2E-Gym keys them.

    Only the text after the first "short test summary info" counts. The key is the part after the
    file path with `::` joined by `.` (`TestX.test_y[param]`), cut at " - " (R2E-Gym cuts PASSED
    keys only when comparing, which gives the same result); lines without a status word, such as
    SKIPPED and XFAIL, are ignored; a collection error (`ERROR r2e_tests/test_x.py`) gets the empty
    key, as there.
    """
    if not log or SUMMARY_HEADER not in log:
        return {}
    statuses: dict[str, str] = {}
    for line in log.split(SUMMARY_HEADER, 1)[1].strip().split("\n"):
        status = next((word for word in STATUSES if word in line), None)
        if status is not None:
            statuses[".".join(line.split("::")[1:]).split(" - ")[0]] = status
    return statuses


def _normalise(statuses: Mapping[str, str]) -> dict[str, str]:
    """R2E-Gym's comparison form: colour codes removed, keys cut at " - ", sorted."""
    clean = {_ANSI_COLOR.sub("", key): value for key, value in statuses.items()}
    return {key.split(" - ")[0]: clean[key] for key in sorted(clean)}


def exact_match(results: Mapping[str, str], expected: Mapping[str, str]) -> bool:
    """R2E-Gym's success test: same number of tests, and every parsed test has its expected
    status (tests expected to fail must fail)."""
    parsed, wanted = _normalise(results), _normalise(expected)
    if len(parsed) != len(wanted):
        return False
    return all(not key or (key in wanted and parsed[key] == wanted[key]) for key in parsed)


def split_tests(expected: Mapping[str, str], old_log: str) -> tuple[list[str], list[str]]:
    """(fail-to-pass, pass-to-pass) derived offline from a dataset row: tests expected to pass
    at the fix that did / did not pass at the buggy commit."""
    before = _normalise(parse_pytest_log(old_log))
    passing = [key for key, status in _normalise(expected).items() if key and status == "PASSED"]
    fail_to_pass = [key for key in passing if before.get(key) != "PASSED"]
    pass_to_pass = [key for key in passing if before.get(key) == "PASSED"]
    return fail_to_pass, pass_to_pass


def binary_test_reward(outcome: RewardInput) -> float:
    """R2E-Gym's exact reward: 1.0 when the hidden tests match the expected output, else 0.0.
    The success metric."""
    if outcome.test_results is None:
        raise ValueError("binary_test_reward needs test results: grade with --grader docker")
    if outcome.tampered:
        return 0.0
    return 1.0 if exact_match(outcome.test_results, outcome.expected) else 0.0


def partial_test_reward(outcome: RewardInput) -> float:
    """The fraction of fail-to-pass tests fixed, or 0.0 if any pass-to-pass test regressed.

    A naive "fraction of matching tests" scores a no-op edit around 0.8-0.95; this one scores it
    0.0. A task with no fail-to-pass test falls back to the exact reward."""
    if outcome.test_results is None:
        raise ValueError("partial_test_reward needs test results: grade with --grader docker")
    if outcome.tampered:
        return 0.0
    results = _normalise(outcome.test_results)
    if any(results.get(key) != "PASSED" for key in outcome.pass_to_pass):
        return 0.0
    if not outcome.fail_to_pass:
        return binary_test_reward(outcome)
    fixed = sum(results.get(key) == "PASSED" for key in outcome.fail_to_pass)
    return fixed / len(outcome.fail_to_pass)


def finished_reward(outcome: RewardInput) -> float:
    """1.0 when the agent called finish(), else 0.0. For runs without a grader (`--grader none`):
    pipeline smoke tests and benchmarks, never a measure of task success."""
    return 1.0 if outcome.finished else 0.0
