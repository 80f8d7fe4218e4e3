"""The README's flag table, made from `ExperimentConfig` (its fields are the flags).

    uv run python -m tests.readme_flags      # rewrites the table in README.md

`tests/test_readme.py` fails while the table and the config disagree.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from common.config import ExperimentConfig

README = Path(__file__).resolve().parent.parent / "README.md"
_TABLE = re.compile(r"^\| Flag \| Default \| Description \|\n(?:^\|.*\|\n)+", re.MULTILINE)


def _default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if callable(value):
        return f"{value.__module__}:{value.__qualname__}"
    return str(value)


def flag_table() -> str:
    defaults = ExperimentConfig()
    rows = ["| Flag | Default | Description |", "|------|---------|-------------|"]
    for name, field in ExperimentConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{flag}` | `{_default(getattr(defaults, name))}` | {description} |")
    return "\n".join(rows) + "\n"


def readme_table() -> str:
    match = _TABLE.search(README.read_text())
    assert match is not None, "README.md has no flag table (| Flag | Default | Description |)"
    return match.group(0)


def main() -> None:
    text = README.read_text()
    README.write_text(text.replace(readme_table(), flag_table()))


if __name__ == "__main__":
    main()
