"""Per-step figures beyond ART's own (ART averages reward and trajectory metrics itself)."""

from __future__ import annotations

from collections import Counter

from trainer.groups import GroupResults


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def step_metrics(
    groups: list[GroupResults],
    dropped: Counter[str],
    *,
    wait_s: float,
    train_s: float,
) -> dict[str, float]:
    """Figures of the groups a step took; the queue's own counters are added by the caller."""
    every = [r for g in groups for r in g.results.values()]
    real = [r for r in every if r.job_id]  # not placeholders of dead jobs
    latency = [r.finished_at - r.started_at for r in real]
    queue_wait = [r.started_at - r.enqueued_at for r in real]
    ok = [r.trajectory for r in real if r.trajectory is not None]
    grading = [float(t.metrics["grading_s"]) for t in ok if "grading_s" in t.metrics]
    metrics = {
        "pipeline/rollouts": float(len(real)),
        "pipeline/failed_rollouts": float(sum(r.status == "failed" for r in every)),
        "pipeline/retried_rollouts": float(sum(r.attempts > 1 for r in real)),
        "pipeline/duplicate_results": float(sum(g.duplicates for g in groups)),
        "pipeline/rollout_latency_p50_s": _percentile(latency, 0.5),
        "pipeline/rollout_latency_p99_s": _percentile(latency, 0.99),
        "pipeline/queue_wait_p50_s": _percentile(queue_wait, 0.5),
        "pipeline/queue_wait_p99_s": _percentile(queue_wait, 0.99),
        "pipeline/grading_latency_p50_s": _percentile(grading, 0.5),
        "pipeline/grading_latency_p99_s": _percentile(grading, 0.99),
        "pipeline/step_wait_s": wait_s,
        "pipeline/step_train_s": train_s,
        # Unfinished rollouts and empty diffs: reward 0 without a grading (--grade-unfinished).
        "pipeline/gradings_skipped": float(sum(bool(t.metrics.get("grading_skipped")) for t in ok)),
    }
    for reason, count in dropped.items():
        metrics[f"pipeline/groups_dropped/{reason}"] = float(count)
    if ok:
        metrics["finished_rate"] = sum(bool(t.metrics.get("finished")) for t in ok) / len(ok)
        metrics["avg_steps"] = sum(float(t.metrics.get("steps", 0)) for t in ok) / len(ok)
        graded = [t for t in ok if "tampered" in t.metrics]
        if graded:  # reward hacking caught by the grader, as a share of graded rollouts
            metrics["reward/tamper_rate"] = sum(bool(t.metrics["tampered"]) for t in graded) / len(
                graded
            )
    return metrics
