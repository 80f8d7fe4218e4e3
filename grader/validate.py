"""`python -m grader.validate`: check a deployment by grading every task's gold patch and an
empty patch through the real grader. Gold must score 1.0 and empty 0.0, on every run; a task
that disagrees is reported broken, one whose score changes between runs flaky, with the reason.

    GRADER_TOKEN=... python -m grader.validate --dataset FILE --docker-url http://HOST:8000

Needs no GPU: this is what to run on a new machine before training. Exits 1 if any task fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from common.diffs import file_diff
from common.errors import GraderError
from common.grading import GradeRequest
from common.rewards import exact_match

# Root files that configure the test runner. The grader runs the image's own (an agent's edit to
# their pytest settings is tampering), so the gold patch leaves them out as an honest agent would.
RUNNER_CONFIG = frozenset(
    {"conftest.py", "pytest.ini", ".pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml"}
)


def gold_patch(parsed_commit_content: str) -> str:
    """The fix commit's changes to non-test files as a unified diff."""
    commit = json.loads(parsed_commit_content)
    sections = []
    for entry in commit.get("file_diffs", []):
        path = entry["header"]["file"]["path"]
        if path.startswith(("r2e_tests/", "tests/", "test/")) or "/test_" in f"/{path}":
            continue
        if path in RUNNER_CONFIG:  # restored to the image's own by the grader in any case
            continue
        old = (entry.get("old_file_content") or "").encode()
        new = (entry.get("new_file_content") or "").encode()
        sections.append(file_diff(path, old, new))
    return "".join(sections)


@dataclass
class Verdict:
    instance_id: str
    gold: list[float] = field(default_factory=list)
    empty: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if any("error" in p for p in self.problems):
            return "error"
        if len(set(self.gold)) > 1 or len(set(self.empty)) > 1:
            return "flaky"
        return (
            "ok"
            if self.gold and self.empty and set(self.gold) == {1.0} and set(self.empty) == {0.0}
            else "broken"
        )


async def validate_task(client: Any, row: dict[str, Any], runs: int, timeout_s: float) -> Verdict:
    from producer.tasks import task_from_row

    task = task_from_row(row)
    verdict = Verdict(task.scenario.instance_id)
    for label, diff, scores in (("gold", gold_patch(row["parsed_commit_content"]), verdict.gold),
                                ("empty", "", verdict.empty)):  # fmt: skip
        for _ in range(runs):
            request = GradeRequest(
                instance_id=verdict.instance_id,
                docker_image=task.grading.docker_image,
                diff=diff,
                timeout_s=timeout_s,
            )
            try:
                report = await client.grade(request)
            except GraderError as exc:
                verdict.problems.append(f"{label}: grading error: {exc}")
                break
            ok = not report.tampered and exact_match(report.statuses, task.grading.expected)
            scores.append(1.0 if ok else 0.0)
            if report.tampered:  # the gold patch itself touches what runs the tests
                verdict.problems.append(f"{label}: flagged as tampering: {report.tamper[:3]}")
            if label == "gold" and not ok and not report.tampered:
                wrong = sorted(
                    k for k, v in task.grading.expected.items() if report.statuses.get(k) != v
                )
                verdict.problems.append(f"gold: tests not as expected: {wrong[:5]}")
            if report.timed_out:
                verdict.problems.append(f"{label}: tests timed out")
    if verdict.empty and 1.0 in verdict.empty:
        verdict.problems.append("empty patch passes: the task tests nothing")
    return verdict


def render(verdicts: list[Verdict]) -> str:
    lines = ["| instance | gold | empty | status | reason |", "|---|---|---|---|---|"]
    for v in verdicts:
        reason = "; ".join(dict.fromkeys(v.problems)) or "-"
        gold = ",".join(f"{s:.0f}" for s in v.gold) or "-"
        empty = ",".join(f"{s:.0f}" for s in v.empty) or "-"
        lines.append(f"| {v.instance_id} | {gold} | {empty} | {v.status} | {reason} |")
    return "\n".join(lines)


async def validate(dataset: str, split: str, url: str, runs: int, limit: int | None,
                   concurrency: int, timeout_s: float) -> list[Verdict]:  # fmt: skip
    from grader.client import GraderClient
    from producer.tasks import COLUMNS, load_rows

    rows = list(load_rows(dataset, split, (*COLUMNS, "parsed_commit_content")))[:limit]
    client = GraderClient(url)
    slots = asyncio.Semaphore(concurrency)

    async def one(row: dict[str, Any]) -> Verdict:
        async with slots:
            return await validate_task(client, row, runs, timeout_s)

    try:
        return list(await asyncio.gather(*(one(row) for row in rows)))
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grader.validate", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--dataset", default="R2E-Gym/R2E-Gym-Lite", help="hub id or local file")
    parser.add_argument("--dataset-split", default="train")
    parser.add_argument("--dataset-size", type=int, default=None, help="first N tasks only")
    parser.add_argument("--docker-url", default="http://docker-node:8000", help="grading service")
    parser.add_argument("--runs", type=int, default=2, help="gradings of each patch (flakiness)")
    parser.add_argument("--concurrency", type=int, default=4, help="tasks validated at once")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="hidden tests time limit")
    args = parser.parse_args(argv)
    verdicts = asyncio.run(
        validate(args.dataset, args.dataset_split, args.docker_url, args.runs, args.dataset_size,
                 args.concurrency, args.timeout_s)
    )  # fmt: skip
    print(render(verdicts))  # noqa: T201
    bad = [v for v in verdicts if v.status != "ok"]
    print(f"{len(verdicts) - len(bad)} ok, {len(bad)} not ok")  # noqa: T201
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
