"""Layout of the repo cache shared by the command that fills it (`producer.repo_cache`) and the
workers that copy from it: `<cache_dir>/index.json` and one directory per instance id."""

from __future__ import annotations

import json
from pathlib import Path

INDEX = "index.json"
# Never copied into the cache, never diffed: git history (it reaches the fix), the image's
# virtualenv, the hidden tests, caches.
SKIPPED_PARTS = frozenset({".git", ".venv", "r2e_tests", "__pycache__", ".pytest_cache"})


def read_index(cache_dir: str | Path) -> dict[str, dict]:
    path = Path(cache_dir) / INDEX
    return json.loads(path.read_text()) if path.exists() else {}


def cached_repo(cache_dir: str | Path, instance_id: str) -> Path | None:
    entry = read_index(cache_dir).get(instance_id)
    return Path(cache_dir) / entry["path"] if entry else None
