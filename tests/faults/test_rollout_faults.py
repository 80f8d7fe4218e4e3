"""The pipeline under faults inside rollouts and on the wire: malformed results, a policy answering
abort, no logprobs, bad JSON, 5xx or hanging, a rollout past its deadline, a sandbox that cannot
start. Real processes and the same invariants as every fault test (`tests.faults.invariants`)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import msgpack
import pytest
from redis import Redis

from common import keys
from common.wire import RolloutResult, decode, encode
from tests.conftest import Processes, pipeline_state, train_calls, wait_for
from tests.fakes.scripted_llm import ScriptedLLM
from tests.faults.invariants import FaultRun, assert_invariants
from tests.faults.support import posted, results_stream
from trainer.status import render_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_malformed_results_are_quarantined_and_rerun(
    redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    redis = Redis.from_url(redis_url)
    with ScriptedLLM(delay_s=0.2) as llm:
        # Replies inline: the first entry is a result, whose reply is damaged below.
        run = FaultRun(
            redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=90,
            overrides={"post_replies_over_tokens": -1},
        )  # fmt: skip
        processes.worker(redis_url, "a")
        trainer = processes.trainer(run.args())
        stream = results_stream(run.art_path)
        wait_for(lambda: posted(redis, stream) >= 1, 60, "a first result")
        [(_, fields)] = redis.xrange(stream, count=1) or [(None, None)]
        real = decode(fields[b"data"], RolloutResult)
        # A result for a rollout not yet in, whose Choice ART cannot rebuild.
        choice = dict(real.trajectory.messages_and_choices[2].data, finish_reason="abort")
        items = list(real.trajectory.messages_and_choices)
        items[2] = items[2].model_copy(update={"data": choice})
        poison = real.model_copy(
            update={
                "rollout_index": 2,
                "group_index": 1,
                "rollout_id": real.rollout_id[:-1] + "2",
                "trajectory": real.trajectory.model_copy(update={"messages_and_choices": items}),
            }
        )
        redis.xadd(stream, {"data": encode(poison)})
        redis.xadd(stream, {"data": b"\xc1 not msgpack"})
        redis.xadd(stream, {"data": msgpack.packb({"v": 99, "type": "x", "body": {}})})
        rows = assert_invariants(run, trainer, processes.logs())
    letters = redis.xrange(keys.dead_letters(pipeline_state(run.art_path)["run_key"]))
    errors = " ".join(fields[b"error"].decode() for _, fields in letters)
    assert len(letters) == 3 and "cannot be rebuilt" in errors, errors
    assert sum(r["pipeline/dead_letters"] for r in rows) == 3


@pytest.mark.parametrize(
    "faults",
    [
        {"abort": 3, "no_logprobs": 2, "bad_json": 2},
        {"http_500": 4, "hang": 2},
    ],
    ids=["abort-no-logprobs-bad-json", "5xx-and-hangs"],
)
def test_policy_faults_are_retried_never_posted(
    faults: dict[str, int],
    redis_url: str,
    dataset: Path,
    tmp_path: Path,
    processes: Processes,
) -> None:
    with ScriptedLLM() as llm:
        for kind, times in faults.items():
            llm.inject(kind, times)
        run = FaultRun(
            redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=90,
            overrides={"request_timeout_s": 1, "rollout_retries": 3},
        )  # fmt: skip
        processes.worker(redis_url, "a")
        rows = assert_invariants(run, processes.trainer(run.args()), processes.logs())
        assert dict(llm.faults_served) == faults
    assert sum(r["pipeline/groups_dropped"] for r in rows) == 0
    assert sum(r["pipeline/dead_letters"] for r in rows) == 0, "a bad response went on the wire"


def test_policy_that_keeps_aborting_drops_groups_never_scores_them(
    redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    with ScriptedLLM() as llm:
        llm.inject("abort", 10_000)
        run = FaultRun(
            redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=60,
            overrides={"rollout_retries": 1},
        )  # fmt: skip
        processes.worker(redis_url, "a")
        rows = assert_invariants(run, processes.trainer(run.args()), processes.logs())
    assert train_calls(run.art_path) == []
    assert all(r["pipeline/groups_dropped/failed_rollout:EndpointError"] == 2 for r in rows)


@pytest.mark.parametrize("reruns", [2, 0], ids=["rerun", "no-reruns-left"])
def test_rollout_past_its_deadline_is_rerun_alone(
    reruns: int, redis_url: str, dataset: Path, tmp_path: Path, processes: Processes
) -> None:
    with ScriptedLLM() as llm:
        llm.inject("hang")  # one request never answers within the request timeout
        run = FaultRun(
            redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=60,
            overrides={"request_timeout_s": 300, "rollout_deadline_s": 4,
                       "rollout_reruns": reruns},
        )  # fmt: skip
        processes.worker(redis_url, "a")
        processes.worker(redis_url, "b")
        trainer = processes.trainer(run.args())
        wait_for(lambda: llm.held_at_least(1), 60, "a request hanging")
        started = time.monotonic()
        status = wait_for(
            lambda: (
                (text := render_status(Redis.from_url(redis_url), "rollouts"))
                * ("waiting for s0g" in text)
            ),
            10,
            "the status to say what the step waits for",
        )
        assert "rollouts [" in status, status
        assert trainer.wait(60) == 0, processes.logs()
        assert time.monotonic() - started < 30, "the step did not wait for the hang to end"
        llm.release()  # the hung job ends; nothing may be left running after it
        rows = assert_invariants(run, None, processes.logs())
    if reruns:
        assert rows[0]["pipeline/rerun_rollouts"] == 1, "only the late rollout is rerun"
        assert rows[0]["pipeline/groups_dropped"] == 0
    else:  # reported failed with the reason: its group dropped, never scored
        assert rows[0]["pipeline/groups_dropped/failed_rollout:RolloutDeadline"] == 1


FAILING_BWRAP = """#!/bin/sh
# bubblewrap that cannot create its namespaces (Docker's default seccomp, userns restrictions);
# the first {failures} starts fail, then the real one runs.
n=$(ls "{starts}" | wc -l); touch "{starts}/$$"
if [ "$n" -lt {failures} ]; then
    echo "bwrap: setting up uid map: Permission denied" >&2
    exit 1
fi
exec {real} "$@"
"""


@pytest.mark.parametrize("failures", [None, 2], ids=["never-starts", "fails-twice"])
def test_sandbox_that_cannot_start_is_infrastructure_never_reward_0(
    failures: int | None,
    request: pytest.FixtureRequest,
    redis_url: str,
    llm: ScriptedLLM,
    dataset: Path,
    tmp_path: Path,
    processes: Processes,
) -> None:
    real = shutil.which("bwrap")
    if real is None:
        pytest.skip("bubblewrap is not installed")
    # Outside pytest's private tmp dir: the worker runs it as the sandbox's own uid.
    shadow = Path(tempfile.mkdtemp(prefix="failing-bwrap-"))
    request.addfinalizer(lambda: shutil.rmtree(shadow, ignore_errors=True))
    starts = shadow / "starts"
    starts.mkdir()
    shadow.chmod(0o755)
    starts.chmod(0o1777)
    script = shadow / "bwrap"
    never = 10**9
    script.write_text(FAILING_BWRAP.format(real=real, starts=starts, failures=failures or never))
    script.chmod(0o755)
    env = {"PATH": f"{shadow}:{os.environ['PATH']}"}
    run = FaultRun(
        redis_url, llm.url, dataset, tmp_path / "art", max_wall_s=90,
        overrides={"rollout_retries": 2},
    )  # fmt: skip
    processes.worker(redis_url, "a", env=env)
    rows = assert_invariants(run, processes.trainer(run.args()), processes.logs())
    if failures is None:  # every rollout failed as SandboxError: every group dropped
        assert train_calls(run.art_path) == []
        assert all(r["pipeline/groups_dropped/failed_rollout:SandboxError"] == 2 for r in rows)
        assert "setting up uid map: Permission denied" in processes.logs()
    else:  # the rollouts that met the broken sandbox got a fresh one
        assert sum(r["pipeline/groups_trained"] for r in rows) == 4
        assert sum(r["pipeline/retried_rollouts"] for r in rows) >= 1
