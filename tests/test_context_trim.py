"""The context budget trims the oldest middle turns, and training stays exact: every sequence ART
tokenizes for training is one the model saw, token for token (ART's own tokenizer path, on CPU,
with a tokenizer built in the test)."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import pytest

from common.wire import RolloutLimits, WireTrajectory
from rollout_workers import rollout
from rollout_workers.context import HEAD, Context, trim_note
from rollout_workers.policy import PolicyClient
from rollout_workers.rollout import RolloutOutcome
from tests.fakes.scripted_llm import ScriptedLLM
from tests.jobs import rollout_job, rollout_limits
from tests.tokenizer import build_tokenizer, encoder, require_torch

SYSTEM = "You are a careful engineer."
PROBLEM = "The answer is wrong."


def _turn(n: int) -> str:
    return f"Turn {n}: look again.\n```python\nprint(' '.join(['line{n}'] * 40))\n```"


def _context_with_turns(turns: int) -> Context:
    context = Context([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "task"}])
    for n in range(turns):
        context.request()
        context.answered(f"reply {n}", prompt_tokens=100 + 60 * n, completion_tokens=10)
        context.observe({"role": "user", "content": f"obs {n} " + "w " * 100})
    return context


# --- the budget itself (no endpoint) ---------------------------------------------------------


def test_a_request_that_fits_is_not_trimmed() -> None:
    context = _context_with_turns(3)
    before = list(context.messages)
    assert context.trim(budget=10_000) is False
    assert context.messages == before and context.dropped_turns == 0


def test_trimming_keeps_system_task_and_the_last_turn_and_says_so() -> None:
    context = _context_with_turns(6)
    last_turn = context.messages[-2:]
    assert context.next_prompt_tokens() > 300
    assert context.trim(budget=300) is True
    assert context.messages[:HEAD] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "task"},
    ]
    assert context.messages[-2:] == last_turn
    assert context.messages[HEAD] == trim_note(context.dropped_turns)
    assert context.dropped_turns >= 1
    assert context.next_prompt_tokens() <= 300
    # A second trim counts every turn dropped so far in its one note.
    for n in range(6, 9):
        context.request()
        context.answered(
            f"reply {n}", prompt_tokens=context.next_prompt_tokens(), completion_tokens=10
        )
        context.observe({"role": "user", "content": f"obs {n} " + "w " * 100})
    dropped = context.dropped_turns
    assert context.trim(budget=300) is True
    assert context.dropped_turns > dropped
    assert [m for m in context.messages if "were dropped" in m["content"]] == [
        trim_note(context.dropped_turns)
    ]


def test_when_even_the_minimum_does_not_fit_nothing_is_dropped() -> None:
    context = _context_with_turns(3)
    before = list(context.messages)
    assert context.trim(budget=50) is None
    assert context.messages == before


def test_a_refusal_from_the_endpoint_drops_every_middle_turn() -> None:
    context = _context_with_turns(4)
    assert context.drop_all_middle() is True
    assert len(context.messages) == HEAD + 1 + 2 and context.dropped_turns == 3
    assert context.drop_all_middle() is False  # nothing left to drop: the rollout ends


# --- a real rollout, tokenized by ART ------------------------------------------------------


def _limits(max_context_tokens: int, max_steps: int) -> RolloutLimits:
    # The budget is set past the config: one test needs less than its minimum (256 tokens).
    limits = rollout_limits(max_steps=max_steps, max_output_chars=4000)
    return limits.model_copy(update={"max_context_tokens": max_context_tokens})


def _rollout(
    limits: RolloutLimits, finish_at: int, encode: Any = None, overflow_when: Any = None
) -> tuple[RolloutOutcome, list[tuple[list[dict[str, Any]], dict[str, Any]]]]:
    turns = itertools.count(1)

    def script(messages: list[dict[str, Any]], rng: random.Random) -> str:
        # Counted here, not from the messages: a trimmed prompt has fewer assistant turns.
        n = next(turns)
        return "Done.\n```python\nfinish()\n```" if n == finish_at else _turn(n)

    async def run() -> RolloutOutcome:
        with ScriptedLLM(
            script=script, record=True, encode=encode, overflow_when=overflow_when
        ) as llm:
            job = rollout_job(llm.url, problem_statement=PROBLEM, limits=limits)
            client = PolicyClient(job.policy, limits)
            try:
                outcome = await rollout.run_rollout(job, client, SYSTEM, record=True)
            finally:
                await client.aclose()
            exchanges.extend(llm.exchanges)
        return outcome

    exchanges: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
    return asyncio.run(run()), exchanges


def test_a_rollout_whose_minimum_passes_the_budget_ends_truncated() -> None:
    outcome, exchanges = _rollout(_limits(max_context_tokens=60, max_steps=6), finish_at=99)
    assert outcome.truncated and not outcome.finished
    assert outcome.context_trims == 0 and outcome.histories == []
    assert outcome.steps == 1 and len(exchanges) == 1


def test_a_prompt_the_endpoint_refuses_as_too_long_is_cut_to_the_minimum_and_sent_again() -> None:
    # Our count says it fits; the endpoint (its tokenizer) says it does not.
    outcome, exchanges = _rollout(
        _limits(max_context_tokens=100_000, max_steps=6), finish_at=8,
        overflow_when=lambda messages: len(messages) >= 8,
    )  # fmt: skip
    assert outcome.finished and not outcome.truncated and outcome.steps == 6
    assert outcome.context_trims == 2 and len(outcome.histories) == 2
    sent = [messages for messages, _ in exchanges]
    assert [len(messages) for messages in sent] == [2, 4, 6, 5, 7, 5]
    for messages in (sent[3], sent[5]):  # system, task, note, and the last turn only
        assert [m["role"] for m in messages] == ["system", "user", "user", "assistant", "user"]
        assert "were dropped" in messages[2]["content"]
    # The turn kept is the last one: the reply to the request before, and its output.
    assert sent[3][3]["content"] == exchanges[2][1]["message"]["content"]
    assert sent[3][4] == {"role": "user", "content": f"Output:\n{' '.join(['line3'] * 40)}\n"}
    for history, messages in zip(outcome.histories, (sent[3], sent[5]), strict=True):
        items = history.messages_and_choices
        assert [item.data for item in items[: len(messages)]] == messages
        assert items[len(messages)].kind == "choice"


def test_a_minimum_the_endpoint_still_refuses_ends_the_rollout_truncated() -> None:
    outcome, exchanges = _rollout(
        _limits(max_context_tokens=100_000, max_steps=6), finish_at=99,
        overflow_when=lambda messages: len(messages) > 2,
    )  # fmt: skip
    assert outcome.truncated and not outcome.finished
    assert outcome.steps == 1 and outcome.context_trims == 0 and outcome.histories == []


@pytest.mark.tokenizer
def test_trimmed_segments_train_exactly_what_the_model_saw() -> None:
    require_torch()
    import art
    from art.preprocessing.tokenize import tokenize_trajectory_groups

    from trainer.trajectories import to_art_trajectory

    corpus = [SYSTEM, PROBLEM, trim_note(3)["content"], "Output:\n(no output)", "Done."]
    corpus += [_turn(n) + "\nOutput:\n" + " ".join([f"line{n}"] * 40) for n in range(1, 12)]
    tokenizer = build_tokenizer(corpus * 3)
    outcome, exchanges = _rollout(
        _limits(max_context_tokens=300, max_steps=12), finish_at=11, encode=encoder(tokenizer)
    )
    assert outcome.finished and not outcome.truncated
    assert outcome.context_trims >= 2, "the budget should have been reached more than once"
    assert len(outcome.histories) == outcome.context_trims  # one segment per trim

    # The segments, in order, hold every Choice once, as the endpoint returned it.
    segments = [outcome.items, *(h.messages_and_choices for h in outcome.histories)]
    choices = [item.data for segment in segments for item in segment if item.kind == "choice"]
    assert choices == [choice for _, choice in exchanges]
    # Each request of a trimmed segment sent the system prompt, the task and the note.
    for segment in segments[1:]:
        assert [item.data["role"] for item in segment[:3]] == ["system", "user", "user"]
        assert "were dropped" in segment[2].data["content"]

    wire = WireTrajectory(
        messages_and_choices=outcome.items, additional_histories=outcome.histories, reward=1.0
    )
    group = art.TrajectoryGroup(
        [to_art_trajectory(wire), to_art_trajectory(wire.model_copy(update={"reward": 0.0}))]
    )
    results = list(
        tokenize_trajectory_groups(
            tokenizer, [group], allow_training_without_logprobs=False, scale_rewards=True,
            shuffle_group_trajectories=False,
        )
    )  # fmt: skip
    assert len(results) == 2 * len(segments)  # every segment of both trajectories trains
    requests = iter(exchanges)
    for result, segment in zip(results[: len(segments)], segments, strict=True):
        segment_choices = [item for item in segment if item.kind == "choice"]
        assert len(result.choice_offsets) == len(segment_choices)
        for offset, item in zip(result.choice_offsets, segment_choices, strict=True):
            sent, returned = next(requests)
            generated = [int(t["token"].split(":")[1]) for t in returned["logprobs"]["content"]]
            assert item.data == returned
            # The trained tokens are the ones the model generated for that request...
            assert result.token_ids[offset : offset + len(generated)] == generated
            assert result.assistant_mask[offset : offset + len(generated)] == [1] * len(generated)
            # ...after exactly the prompt that request sent, as the model's template renders it.
            seen = tokenizer.apply_chat_template(sent, add_generation_prompt=True, tokenize=True)
            seen = seen["input_ids"] if isinstance(seen, dict) or hasattr(seen, "keys") else seen
            assert result.token_ids[:offset] == list(seen)
            # Before this Choice, the segment holds the messages that request sent.
            index = segment.index(item)
            history = [
                {"role": "assistant", "content": i.data["message"]["content"]}
                if i.kind == "choice"
                else i.data
                for i in segment[:index]
            ]
            assert history == sent
    trained = sum(sum(r.assistant_mask) for r in results[: len(segments)])
    assert trained == sum(len(c["logprobs"]["content"]) for c in choices)  # each Choice once
