"""Runs inside the task container: `python -m pytest` as run_tests.sh would, but so that the
agent's changes reach the hidden tests only through the code under test.

Started as `<venv python> -S launch.py <work dir> <pytest args>` from /testbed (grade.sh):
- `-S` skips `site`, whose sitecustomize/usercustomize lookup would reach /testbed through an
  editable install's .pth. The virtualenv's site-packages are added here as `site` would, .pth
  files included (the virtualenv is the image's own: the diff may not touch it).
- pytest, its plugins and every module they import are imported before /testbed goes on
  sys.path, and a finder pins the standard library's and the virtualenv's top-level names to
  their own directories unless the repository itself defined them before the diff.
- pytest plugins are loaded from entry points with /testbed off sys.path, so package metadata
  in the repository cannot register one.
- The statuses are read from what pytest's terminal reporter itself wrote after "short test
  summary info", recorded in memory and written to fd 3 (a file grade.sh opened), not from
  stdout: a module under test printing "PASSED ..." lines, now or at exit, only reaches the log.
- The functions and classes pytest and pluggy run and report tests with are fingerprinted before
  the run and compared after it: code under test that monkeypatches them is named on fd 4
  (a tampering finding). This is detection, not isolation: code running in the tests' process
  can do anything that process can (README, security model).

Python 3.7 or later, standard library and pytest only.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib
import importlib.machinery
import io
import os
import pkgutil
import sys

SUMMARY_HEADER = "short test summary info"
MAX_SUMMARY_CHARS = 8 * 1024 * 1024
METADATA_SUFFIXES = (".dist-info", ".egg-info", ".egg-link", ".pth")
TESTBED = os.getcwd()


def _inside(path: str) -> bool:
    full = os.path.abspath(path or ".")
    return full == TESTBED or full.startswith(TESTBED + os.sep)


def add_site_packages() -> None:
    """What `site` does for a virtualenv, without sitecustomize and usercustomize."""
    import site

    venv = os.path.dirname(os.path.dirname(sys.executable))  # not resolved: bin/python is a link
    config = os.path.join(venv, "pyvenv.cfg")
    system = True
    if os.path.exists(config):
        with open(config) as file:
            settings = dict(
                (key.strip().lower(), value.strip().lower())
                for key, _, value in (line.partition("=") for line in file)
            )
        system = settings.get("include-system-site-packages") == "true"
        sys.prefix = sys.exec_prefix = venv
        for directory in sorted(glob.glob(os.path.join(venv, "lib", "python*", "site-packages"))):
            site.addsitedir(directory)
    if system:
        for directory in site.getsitepackages([sys.base_prefix]):
            site.addsitedir(directory)
    for helper in ("setquit", "setcopyright", "sethelper"):  # builtins `site` would add
        getattr(site, helper, lambda: None)()


class PinnedFinder:
    """Resolves pinned top-level names outside /testbed only (before the path finder), and
    notes each one the repository now shadows: `shadowed` are modules the run imported that
    the diff's files would have replaced."""

    def __init__(self, pinned: set[str]) -> None:
        self.pinned = pinned
        self.shadowed: set[str] = set()

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        if path is not None or name not in self.pinned:
            return None
        candidates = [
            os.path.join(TESTBED, name + ".py"),
            os.path.join(TESTBED, name, "__init__.py"),
        ]
        if any(os.path.exists(c) for c in candidates) or glob.glob(
            os.path.join(TESTBED, name + ".*.so")
        ):
            self.shadowed.add(name)
        outside = [entry for entry in sys.path if not _agents(entry)]
        spec = importlib.machinery.PathFinder.find_spec(name, outside)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return spec


def swapped_modules(pinned: set[str]) -> set[str]:
    """Pinned names whose entry in sys.modules is now a module from /testbed: code under test
    put it there (`sys.modules["json"] = ...`), around the finder."""
    swapped = set()
    for name in pinned:
        module = sys.modules.get(name)
        location = getattr(module, "__file__", None) if module is not None else None
        if isinstance(location, str) and _agents(location):
            swapped.add(name)
    return swapped


def _agents(path: str) -> bool:
    """Inside /testbed but not the hidden tests (restored by grade.sh): a hidden test's own helper
    module (r2e_tests/utils.py) still comes first, as under `python -m pytest`."""
    return _inside(path) and not _inside_tests(path)


def _inside_tests(path: str) -> bool:
    full = os.path.abspath(path or ".")
    tests = os.path.join(TESTBED, "r2e_tests")
    return full == tests or full.startswith(tests + os.sep)


def pin_modules(work: str) -> PinnedFinder:
    with open(os.path.join(work, "head-modules")) as file:
        own = set(file.read().split("\n"))
    names = set(sys.builtin_module_names) | set(getattr(sys, "stdlib_module_names", ()))
    for directory in sys.path:
        if _inside(directory) or not os.path.isdir(directory):
            continue
        for entry in os.listdir(directory):
            name = entry.split(".")[0]
            if name.isidentifier() and not entry.endswith(METADATA_SUFFIXES):
                names.add(name)
    finder = PinnedFinder(names - own)
    at = next(
        (i for i, f in enumerate(sys.meta_path) if f is importlib.machinery.PathFinder),
        len(sys.meta_path),
    )
    sys.meta_path.insert(at, finder)
    return finder


def import_pytest() -> object:
    """pytest and everything of it, imported before /testbed is on sys.path."""
    import pytest

    for package in ("_pytest", "pluggy"):
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            # Optional parts (a missing extra) fail to import: pytest copes without them.
            with contextlib.suppress(Exception):
                importlib.import_module(info.name)
    return pytest


def load_entry_points_outside_testbed() -> None:
    """pytest11 entry points are read with /testbed off sys.path."""
    import pluggy

    original = pluggy.PluginManager.load_setuptools_entrypoints

    def load(self: object, group: str, name: str | None = None) -> int:
        saved = sys.path[:]
        sys.path[:] = [entry for entry in saved if not _inside(entry)]
        try:
            return original(self, group, name)
        finally:
            sys.path[:] = saved

    pluggy.PluginManager.load_setuptools_entrypoints = load


class _Tee:
    """The reporter's file, copying everything from the summary header on into `copy`."""

    def __init__(self, inner: object, copy: io.StringIO) -> None:
        self._inner, self._copy, self._on = inner, copy, False

    def write(self, text: str) -> object:
        if not self._on and SUMMARY_HEADER in text:
            self._on = True
        if self._on and self._copy.tell() < MAX_SUMMARY_CHARS:
            self._copy.write(text)
        return self._inner.write(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def hidden_test_digests() -> dict[str, str]:
    """sha256 of every hidden test source (r2e_tests, restored by grade.sh) and the root conftest:
    code under test rewriting a test file before it is collected is named, not paid."""
    digests = {}
    paths = [os.path.join(TESTBED, "conftest.py")]
    for directory, subdirs, names in os.walk(os.path.join(TESTBED, "r2e_tests")):
        subdirs[:] = [name for name in subdirs if name != "__pycache__"]
        paths += [os.path.join(directory, name) for name in names]
    for path in paths:
        try:
            with open(path, "rb") as file:
                digests[os.path.relpath(path, TESTBED)] = hashlib.sha256(file.read()).hexdigest()
        except OSError:
            digests[os.path.relpath(path, TESTBED)] = "unreadable"
    return digests


class Recorder:
    def __init__(self) -> None:
        self.summary = io.StringIO()
        self.tests = hidden_test_digests()
        self.changed: set[str] = set()

    def _compare(self) -> None:
        now = hidden_test_digests()
        self.changed |= {
            path for path in self.tests.keys() | now.keys() if self.tests.get(path) != now.get(path)
        }

    def pytest_collection_finish(self, session: object) -> None:
        self._compare()  # once every test file has been read, and again after the run

    def pytest_sessionstart(self, session: object) -> None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            writer = reporter._tw
            writer._file = _Tee(writer._file, self.summary)


# Where a test's outcome is made, reported and summarised.
WATCHED_MODULES = (
    "_pytest.reports", "_pytest.runner", "_pytest.terminal", "_pytest.main", "_pytest.python",
    "_pytest.skipping", "_pytest.outcomes", "_pytest.nodes", "_pytest.config", "_pytest.capture",
    "pluggy", "pluggy._callers", "pluggy._hooks", "pluggy._manager", "pluggy.callers",
    "pluggy.hooks", "pluggy.manager",
)  # fmt: skip


def fingerprint() -> dict[str, object]:
    """Every function and class in the watched modules, and their classes' attributes: a
    monkeypatch replaces one of them. The objects themselves are kept (compared with `is`): an
    id alone could be reused by the replacement once the original is freed."""
    seen = {}
    for name in WATCHED_MODULES:
        module = sys.modules.get(name)
        if module is None:
            continue
        seen[name] = module
        for attribute, value in list(vars(module).items()):
            if isinstance(value, type) and value.__module__ == name:
                seen[f"{name}.{attribute}"] = value
                for member, inner in list(vars(value).items()):
                    if callable(inner) or isinstance(inner, (property, classmethod, staticmethod)):
                        seen[f"{name}.{attribute}.{member}"] = inner
            elif callable(value) and getattr(value, "__module__", None) == name:
                seen[f"{name}.{attribute}"] = value
    return seen


def main() -> None:
    work, arguments = sys.argv[1], sys.argv[2:]
    # Not -I: the image's PYTHON* variables (PYTHONHASHSEED, PYTHONPATH...) apply as under
    # run_tests.sh, and the agent cannot set any. Only this script's own directory goes.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    add_site_packages()
    pytest = import_pytest()
    load_entry_points_outside_testbed()
    pinned = pin_modules(work)
    sys.path.insert(0, TESTBED)  # as `python -m` puts the working directory first
    sys.argv = [os.path.join(os.path.dirname(pytest.__file__), "__main__.py"), *arguments]
    recorder = Recorder()
    code = 1
    before = fingerprint()
    try:
        code = int(pytest.main(arguments, plugins=[recorder]))
    finally:
        after = fingerprint()
        changed = sorted(key for key in before if after.get(key) is not before[key])
        recorder._compare()
        findings = "".join(f"pytest internals changed at run time: {key}\n" for key in changed)
        findings += "".join(
            f"hidden tests changed at run time: {path}\n" for path in sorted(recorder.changed)
        )
        findings += "".join(
            f"new module shadowing `{name}` (imported during the tests): {name}\n"
            for name in sorted(pinned.shadowed | swapped_modules(pinned.pinned))
        )
        for fd, text in ((3, recorder.summary.getvalue()[:MAX_SUMMARY_CHARS]), (4, findings)):
            data = text.encode("utf-8", "replace")
            while data:
                data = data[os.write(fd, data) :]
    sys.exit(code)


if __name__ == "__main__":
    main()
