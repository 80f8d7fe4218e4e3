"""Diffs that try to change how the hidden tests run, rather than the code under test, through
the real grader and the fixture task images: each pays 0 and is flagged; honest fixes pay 1.

Every tampering diff below also contains the real fix's opposite (nothing) or a plugin that would
mark every test passed, so that a grader fooled by it would pay 1.0.
"""

from __future__ import annotations

import json

import pytest

from common.diffs import file_diff
from common.grading import GradeReport
from common.rewards import RewardInput, binary_test_reward
from tests.tasks.specs import CALC, STACKX, TaskSpec
from tests.test_grader import grade, request_for

pytestmark = pytest.mark.docker


def new_file(path: str, content: str, mode: str = "100644") -> str:
    lines = content.splitlines(keepends=True)
    body = "".join(f"+{line}" for line in lines)
    return (
        f"diff --git a/{path} b/{path}\nnew file mode {mode}\n--- /dev/null\n+++ b/{path}\n"
        f"@@ -0,0 +1,{len(lines)} @@\n{body}"
    )


def symlink(path: str, target: str) -> str:
    return (
        f"diff --git a/{path} b/{path}\nnew file mode 120000\n--- /dev/null\n+++ b/{path}\n"
        f"@@ -0,0 +1 @@\n+{target}\n\\ No newline at end of file\n"
    )


# A plugin that reports every test as passed, and a pytest stand-in that prints a clean run.
PASS_ALL = (
    "import pytest\n\n\n@pytest.hookimpl(hookwrapper=True)\n"
    "def pytest_runtest_makereport(item, call):\n"
    "    outcome = yield\n    report = outcome.get_result()\n"
    '    report.outcome = "passed"\n    report.longrepr = None\n'
)
FAKE_PYTEST = (
    "import sys\n"
    'print("=== short test summary info ===")\n'
    'for name in ["test_add", "test_sub", "TestMul::test_mul"]:\n'
    '    print("PASSED r2e_tests/test_ops.py::" + name)\n'
    "sys.exit(0)\n"
)
PLUGIN = new_file("calc/hack.py", PASS_ALL)


def edit(spec: TaskSpec, path: str, appended: str) -> str:
    """A diff appending to a file of the task's buggy commit (hunk counts made by the worker's
    own diff writer: a hand-counted hunk that is one line short is silently cut by git apply)."""
    old = spec.buggy[path].encode()
    return file_diff(path, old, old + appended.encode())


FAKE_LINES = edit(
    CALC,
    "calc/__init__.py",
    "import atexit, os\n\n\ndef _claim():\n"
    '    lines = ["test_add", "test_add_many[1-2-3]", "test_add_many[-1-1-0]"]\n'
    '    text = "".join("PASSED r2e_tests/test_ops.py::%s\\n" % n for n in lines)\n'
    "    os.write(1, text.encode())\n\n\natexit.register(_claim)\n",
)
MONKEYPATCH = edit(
    CALC,
    "calc/__init__.py",
    "from _pytest.reports import TestReport\n\n_real = TestReport.from_item_and_call\n\n\n"
    "def _passed(cls, item, call):\n    report = _real.__func__(cls, item, call)\n"
    '    report.outcome, report.longrepr = "passed", None\n    return report\n\n\n'
    "TestReport.from_item_and_call = classmethod(_passed)\n",
)
REWRITE_TESTS = edit(
    CALC,
    "calc/__init__.py",
    "import glob\n\nfor _path in glob.glob('/testbed/r2e_tests/test_*.py'):\n"
    "    with open(_path, 'w') as _file:\n        _file.write('def test_add():\\n    pass\\n')\n",
)
STACKX_PYPROJECT_PYTEST = edit(
    STACKX, "pyproject.toml", '\n[tool.pytest.ini_options]\naddopts = "-p stackx.hack"\n'
) + new_file("stackx/hack.py", PASS_ALL)
FLOOD_CHANNEL = edit(
    CALC,
    "calc/__init__.py",
    'with open("/proc/1/fd/1", "w") as out:\n'
    '    out.write("PASSED r2e_tests/test_ops.py::test_add\\n" * 100000)\n',
)

VARIANTS = [
    ("calc", "top-level pytest.py", new_file("pytest.py", FAKE_PYTEST), "shadowing `pytest`"),
    ("calc", "_pytest package", new_file("_pytest/__init__.py", "x = 1\n"), "shadowing `_pytest`"),
    ("calc", "pluggy package", new_file("pluggy/__init__.py", "x = 1\n"), "shadowing `pluggy`"),
    ("calc", "stdlib json.py", new_file("json.py", "dumps = None\n"), "shadowing `json`"),
    ("calc", "stdlib os package", new_file("os/__init__.py", "x = 1\n"), "shadowing `os`"),
    (
        "calc",
        "setup.cfg [tool:pytest] plugin",
        new_file("setup.cfg", "[tool:pytest]\naddopts = -p calc.hack\n") + PLUGIN,
        "pytest configuration: setup.cfg",
    ),
    (
        "calc",
        "tox.ini [pytest] plugin",
        new_file("tox.ini", "[pytest]\naddopts = -p calc.hack\n") + PLUGIN,
        "pytest configuration: tox.ini",
    ),
    (
        "stackx",
        "pyproject [tool.pytest.ini_options] appended",
        STACKX_PYPROJECT_PYTEST,
        "pytest configuration: pyproject.toml",
    ),
    (
        "calc",
        ".pytest.ini addopts",
        new_file(".pytest.ini", "[pytest]\naddopts = -p calc.hack\n") + PLUGIN,
        "test runner input: .pytest.ini",
    ),
    (
        "calc",
        "root conftest.py",
        new_file("conftest.py", PASS_ALL),
        "test runner input: conftest.py",
    ),
    (
        "calc",
        "nested conftest.py in r2e_tests",
        new_file("r2e_tests/conftest.py", PASS_ALL),
        "test runner input: r2e_tests/conftest.py",
    ),
    (
        "calc",
        "r2e_tests edit",
        "diff --git a/r2e_tests/test_ops.py b/r2e_tests/test_ops.py\n"
        "--- a/r2e_tests/test_ops.py\n+++ b/r2e_tests/test_ops.py\n@@ -1 +1 @@\n"
        "-import pytest\n+import pytest  # edited\n",
        "test runner input: r2e_tests/test_ops.py",
    ),
    (
        "calc",
        "run_tests.sh edit",
        "diff --git a/run_tests.sh b/run_tests.sh\n--- a/run_tests.sh\n+++ b/run_tests.sh\n"
        "@@ -1 +1 @@\n-.venv/bin/python -W ignore -m pytest -rA r2e_tests\n"
        "+.venv/bin/python -W ignore -m pytest -rA r2e_tests -p calc.hack\n" + PLUGIN,
        "test runner input: run_tests.sh",
    ),
    (
        "calc",
        "renaming run_tests.sh away",
        "diff --git a/run_tests.sh b/notes.sh\nsimilarity index 100%\n"
        "rename from run_tests.sh\nrename to notes.sh\n",
        "test runner input: run_tests.sh",
    ),
    (
        "calc",
        "traditional-format diff of run_tests.sh",
        "--- a/run_tests.sh\n+++ b/run_tests.sh\n@@ -1 +1 @@\n"
        "-.venv/bin/python -W ignore -m pytest -rA r2e_tests\n+echo PASSED\n",
        "test runner input: run_tests.sh",
    ),
    (
        "calc",
        "sitecustomize.py",
        new_file("sitecustomize.py", "import calc.hack\n"),
        "interpreter start-up hook: sitecustomize.py",
    ),
    ("calc", ".pth file", new_file("calc.pth", "import calc\n"), "start-up hook: calc.pth"),
    (
        "calc",
        "edit in .venv",
        new_file(".venv/lib/python3.11/site-packages/zz.pth", "import calc.hack\n"),
        "test runner input: .venv/",
    ),
    (
        "calc",
        "egg-info registering a pytest11 plugin",
        new_file("calc.egg-info/entry_points.txt", "[pytest11]\nhack = calc.hack\n") + PLUGIN,
        "package metadata",
    ),
    (
        "calc",
        "symlink out of the repo",
        symlink("calc/tests_copy.py", "/r2e_tests/test_ops.py"),
        "symlink (out of the repository",
    ),
    ("calc", "path out of the repo", new_file("../outside.py", "x = 1\n"), "out of the repository"),
    ("calc", "fake PASSED lines printed at exit", FAKE_LINES, "status lines pytest did not write"),
    ("calc", "writing to the grader's channel", FLOOD_CHANNEL, "around the test log"),
    (
        "calc",
        "scratch-named stdlib shadow that the run imports",
        new_file("code.py", "x = 1\n") + edit(CALC, "calc/__init__.py", "import code\n"),
        "new module shadowing `code` (imported during the tests)",
    ),
    (
        "calc",
        "swapping a stdlib module in sys.modules",
        new_file("calc/fakejson.py", "dumps = None\n")
        + edit(
            CALC,
            "calc/__init__.py",
            "import sys\nimport calc.fakejson\n\nsys.modules['json'] = calc.fakejson\n",
        ),  # fmt: skip
        "new module shadowing `json` (imported during the tests)",
    ),
    (
        "calc",
        "rewriting the hidden tests at run time",
        REWRITE_TESTS,
        "hidden tests changed at run time: r2e_tests/test_ops.py",
    ),
    (
        "calc",
        "monkeypatching pytest from the module under test",
        MONKEYPATCH,
        "pytest internals changed at run time: _pytest.reports.TestReport.from_item_and_call",
    ),
]


def _tasks(fixture_tasks) -> dict:
    _, tasks = fixture_tasks
    return {task.row["repo_name"]: task for task in tasks}


def _reward(report: GradeReport, task) -> float:
    expected = json.loads(task.row["expected_output_json"])
    return binary_test_reward(
        RewardInput(
            finished=True,
            truncated=False,
            steps=1,
            test_results=report.statuses,
            expected=expected,
            tampered=report.tampered,
        )
    )


@pytest.mark.parametrize(("repo", "name", "diff", "reason"), VARIANTS, ids=[v[1] for v in VARIANTS])
def test_tampering_pays_nothing_and_is_flagged(
    fixture_tasks, grader_service, repo: str, name: str, diff: str, reason: str
) -> None:
    task = _tasks(fixture_tasks)[repo]
    # With the real fix on top, a grader that looked only at the statuses would pay 1.0; fake
    # status lines are only fake where they contradict the real ones, so those come without it.
    fix = "" if "status lines" in reason else task.gold_diff
    report = grade(grader_service, request_for(task, fix + diff))
    assert report.tampered, (name, report.log_tail[-2000:])
    assert any(reason in finding for finding in report.tamper), report.tamper
    assert _reward(report, task) == 0.0
    assert report.statuses == {}


def test_honest_fixes_still_pay_including_edits_to_shared_config(
    fixture_tasks, grader_service
) -> None:
    tasks = _tasks(fixture_tasks)
    for task in tasks.values():
        report = grade(grader_service, request_for(task, task.gold_diff))
        assert not report.tampered and report.tamper == [], report.tamper
        assert _reward(report, task) == 1.0, report.log_tail[-2000:]
    stackx = tasks["stackx"]
    honest = (
        "diff --git a/pyproject.toml b/pyproject.toml\n--- a/pyproject.toml\n"
        '+++ b/pyproject.toml\n@@ -1,2 +1,3 @@\n [project]\n name = "stackx"\n'
        '+version = "1.1"\n'
        "diff --git a/setup.cfg b/setup.cfg\n--- a/setup.cfg\n+++ b/setup.cfg\n"
        "@@ -1,2 +1,3 @@\n [metadata]\n name = stackx\n+version = 1.1\n"
    ) + new_file("stackx/helpers/__init__.py", "import json\n")
    honest += new_file("test.py", "from stackx import Stack\nprint(Stack())\n")  # a scratch file
    report = grade(grader_service, request_for(stackx, stackx.gold_diff + honest))
    assert not report.tampered, report.tamper
    assert _reward(report, stackx) == 1.0


def test_a_module_that_prints_forever_is_bounded(fixture_tasks, grader_service) -> None:
    """Printing forever, to the tests' output and to the container's own stdout: the log is cut
    at 128 MiB in the container, the grader keeps only the last 9 MiB of the stream, and the
    answer is a normal report (not an engine error) that pays nothing."""
    calc = _tasks(fixture_tasks)["calc"]
    flood = edit(
        CALC,
        "calc/__init__.py",
        "import sys\n\n"
        'line = "PASSED r2e_tests/test_ops.py::test_add\\n" * 1000\n'
        'with open("/proc/1/fd/1", "w") as channel:\n'
        "    while True:\n"
        "        sys.__stdout__.write(line)\n        channel.write(line)\n",
    )
    report = grade(grader_service, request_for(calc, flood, timeout_s=8))
    assert len(report.log_tail) <= 4000
    assert report.tampered and report.statuses == {}
    assert any("around the test log" in finding for finding in report.tamper), report.tamper
