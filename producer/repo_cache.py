"""`python -m producer.repo_cache`: copy each task's /testbed out of its image, once.

Workers start every rollout from a local copy (`<cache_dir>/<instance_id>/`), so they need no
Docker. The copy leaves out the git history (it reaches the fix commit), the image's virtualenv
and the hidden tests; `<cache_dir>/index.json` lists what is cached. Entries already in the index
are kept; each new one is written to a temporary directory and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common.log import setup_logging
from common.repo_cache import INDEX, SKIPPED_PARTS, read_index

log = logging.getLogger("producer.repo_cache")


def cache_repo(image: str, instance_id: str, cache_dir: Path) -> dict:
    """Copy /testbed of `image` to `cache_dir/instance_id`; returns its index entry."""
    name = f"rlm-cache-{uuid.uuid4().hex[:12]}"
    created = subprocess.run(
        ["docker", "create", "--network", "none", "--name", name, image, "true"],
        capture_output=True, text=True,
    )  # fmt: skip
    if created.returncode != 0:
        raise RuntimeError(f"cannot create a container of {image}: {created.stderr.strip()[-500:]}")
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir))
    try:
        exported = subprocess.Popen(
            ["docker", "cp", f"{name}:/testbed", "-"], stdout=subprocess.PIPE
        )
        excludes = [f"--exclude=testbed/{part}" for part in sorted(SKIPPED_PARTS)]
        excludes += ["--exclude=testbed/run_tests.sh"]
        untar = subprocess.run(
            ["tar", "-x", "-C", str(staging), *excludes], stdin=exported.stdout, capture_output=True
        )
        if exported.wait() != 0 or untar.returncode != 0:
            raise RuntimeError(
                f"cannot copy /testbed out of {image}: {untar.stderr.decode()[-500:]}"
            )
        target = cache_dir / instance_id
        if target.exists():
            shutil.rmtree(target)
        (staging / "testbed").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    files = [p for p in target.rglob("*") if p.is_file()]
    return {
        "path": instance_id,
        "docker_image": image,
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "cached_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _write_index(cache_dir: Path, index: dict[str, dict]) -> None:
    tmp = cache_dir / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
    tmp.replace(cache_dir / INDEX)


def fill_cache(
    dataset: str, split: str, cache_dir: Path, limit: int | None = None
) -> dict[str, dict]:
    from producer.tasks import load_tasks

    cache_dir.mkdir(parents=True, exist_ok=True)
    index = read_index(cache_dir)
    tasks = load_tasks(dataset, split, limit).tasks
    failed = 0
    for task in tasks:
        instance_id = task.scenario.instance_id
        if instance_id in index:
            continue
        try:
            index[instance_id] = cache_repo(task.grading.docker_image, instance_id, cache_dir)
        except RuntimeError as exc:
            failed += 1
            log.error("%s not cached: %s", instance_id, exc)
            continue
        _write_index(cache_dir, index)
        log.info("cached %s (%d files)", instance_id, index[instance_id]["files"])
    log.info("%d of %d tasks cached in %s (%d failed)", len(index), len(tasks), cache_dir, failed)
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m producer.repo_cache", description=__doc__)
    parser.add_argument("--dataset", default="R2E-Gym/R2E-Gym-Lite", help="hub id or local file")
    parser.add_argument("--dataset-split", default="train")
    parser.add_argument("--dataset-size", type=int, default=None, help="first N tasks only")
    parser.add_argument("--cache-dir", default="/data/repo-cache")
    args = parser.parse_args(argv)
    setup_logging()
    fill_cache(args.dataset, args.dataset_split, Path(args.cache_dir), args.dataset_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
