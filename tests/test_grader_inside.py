"""The grader's in-container checks, unit by unit (no Docker): they run under the task image's
own interpreter, which may be as old as Python 3.7, so they are parsed with 3.7's grammar too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from grader.inside import check

INSIDE = Path(check.__file__).parent


@pytest.mark.parametrize("name", ["check.py", "launch.py"])
def test_the_container_side_parses_as_python_3_7(name: str) -> None:
    ast.parse((INSIDE / name).read_text(), feature_version=(3, 7))


@pytest.mark.parametrize(
    ("path", "marker"),
    [
        ("json.py", "json"),
        ("json/__init__.py", "json"),
        ("_pytest/__init__.pyc", "_pytest"),
        ("numpy.cpython-311-x86_64-linux-gnu.so", "numpy"),
        ("pytest", "pytest"),  # a bare entry: a symlink to a package
        ("calc/ops.py", None),
        ("json/decoder.py", None),  # needs json/__init__.py to shadow anything
        ("README.md", None),
    ],
)
def test_module_markers(path: str, marker: str | None) -> None:
    assert check.module_marker(path) == marker


def test_path_reasons_cover_every_way_around_the_code() -> None:
    reserved = {"json", "pytest", "_pytest", "os"}

    def reasons(path: str) -> list[str]:
        return check.path_reasons(path, reserved)

    assert reasons("calc/ops.py") == [] and reasons("docs/conftest.py") == []
    runner = ["run_tests.sh", "conftest.py", "pytest.ini", ".pytest.ini", "r2e_tests/x.py"]
    runner += [".venv/bin/python", ".git/config", "sub/.git/hooks/x", ".pytest_cache/v"]
    for path in runner:
        assert "test runner input" in reasons(path), path
    assert "path out of the repository" in reasons("../x.py")
    assert reasons("deep/sitecustomize.py") == ["interpreter start-up hook"]
    assert reasons("a.pth") == ["interpreter start-up hook"]
    assert reasons("calc.egg-info/entry_points.txt")[0].startswith("package metadata")
    assert reasons("calc/__pycache__/ops.cpython-311.pyc") == ["compiled bytecode"]
    assert reasons("json.py") == ["new module shadowing `json`"]


def test_runner_command_accepts_r2e_gym_s_line_only(tmp_path: Path) -> None:
    script = tmp_path / "run_tests.sh"
    script.write_text(".venv/bin/python -W ignore -m pytest -rA r2e_tests\n")
    assert check.runner_command(str(script)) == (
        [".venv/bin/python", "-W", "ignore"],
        ["-rA", "r2e_tests"],
    )
    for line in ("pytest r2e_tests", ".venv/bin/python -c 'x' -m pytest",
                 ".venv/bin/python -m pytest r2e_tests && echo PASSED"):  # fmt: skip
        script.write_text(line)
        with pytest.raises(ValueError):
            check.runner_command(str(script))


def test_pytest_settings_see_only_what_pytest_reads() -> None:
    base = '[project]\nname = "x"\n'
    settings = check.pytest_settings
    assert settings("pyproject.toml", base) == settings("pyproject.toml", base + 'version = "2"\n')
    for added in ('\n[tool.pytest.ini_options]\naddopts = "-p x"\n',
                  '\n[tool]\npytest.ini_options.addopts = "-p x"\n'):  # fmt: skip
        assert settings("pyproject.toml", base) != settings("pyproject.toml", base + added)
    cfg = "[metadata]\nname = x\n"
    assert settings("setup.cfg", cfg) == settings("setup.cfg", cfg + "version = 2\n")
    assert settings("setup.cfg", cfg) != settings(
        "setup.cfg", cfg + "[tool:pytest]\naddopts=-p x\n"
    )
    assert settings("tox.ini", None) != settings("tox.ini", "[pytest]\naddopts = -p x\n")
    assert settings("tox.ini", None) == settings("tox.ini", "[tox]\nenvlist = py311\n")
    assert settings("pyproject.toml", None) == settings("pyproject.toml", base)


def test_touched_paths_are_read_as_git_apply_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from common.diffs import file_diff

    repo = tmp_path / "testbed"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    monkeypatch.setattr(check, "TESTBED", str(repo))
    diff = tmp_path / "agent.diff"
    diff.write_text(
        'diff --git "a/run_tests\\056sh" b/pytest.py\nsimilarity index 100%\n'
        'rename from "run_tests\\056sh"\nrename to pytest.py\n'
        + file_diff(b"caf\xe9 dir/data.bin", None, bytes(range(256)))
        + "--- a/r2e_tests/t.py\n+++ b/r2e_tests/t.py\n@@ -1 +1 @@\n-x\n+y\n"
    )
    assert check.touched_paths(str(diff)) == [
        "pytest.py",
        "caf\udce9 dir/data.bin",
        "r2e_tests/t.py",
        "run_tests.sh",  # the rename's source: git apply removes it
    ]
