"""Workers and `common` stay light: importing them never loads art, torch, transformers, openai."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEAVY = ("art", "torch", "transformers", "openai", "datasets")


@pytest.mark.parametrize(
    "module",
    [
        "common",
        "common.config",
        "common.wire",
        "common.queue",
        "common.health",
        "rollout_workers.job",
        "rollout_workers.worker",
        "rollout_workers.__main__",
    ],
)
def test_import_stays_light(module: str) -> None:
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"{module} pulled in {result.stdout.strip()}"
