"""A small chat tokenizer built inside the test, for ART's tokenizer path on CPU (no hub).

`require_torch()` first: ART's `art.preprocessing.tokenize` imports torch, which the project does
not take from PyPI (its wheel there is the CUDA build); `.ci/run` installs a CPU wheel into the
venv. Without torch the tests marked `tokenizer` skip, unless `RLM_REQUIRE_TORCH=1` (CI), where
they fail.

`build_tokenizer(corpus)` trains a byte-level BPE on the corpus (any text still encodes, byte by
byte, and decodes back exactly) and wraps it in `transformers.PreTrainedTokenizerFast` with a
ChatML template, the format Qwen models use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

REQUIRE_TORCH_ENV = "RLM_REQUIRE_TORCH"  # set by CI: a missing torch fails instead of skipping
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def require_torch() -> None:
    """Skip (or, under RLM_REQUIRE_TORCH=1, fail) when ART's tokenizer path cannot import."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        if os.environ.get(REQUIRE_TORCH_ENV) == "1":
            pytest.fail(f"{REQUIRE_TORCH_ENV}=1 but ART's tokenizer cannot import: {exc}")
        pytest.skip(f"needs torch ({exc}); .ci/run installs a CPU wheel")


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus`, with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        chat_template=CHAT_TEMPLATE,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )


def default_corpus() -> list[str]:
    """Text like the pipeline tests': the scripted agents' turns, prompts and REPL output."""
    from common.prompts import r2e_system_prompt
    from tests.fakes import agent_scripts, scripted_llm

    turns = [scripted_llm.EXPLORE, scripted_llm.FINISH, scripted_llm.WANDER, scripted_llm.THINK]
    turns += list(agent_scripts.HOSTILE_TURNS)
    return (turns + [r2e_system_prompt(), "Output:\n['README.md', 'calc', 'tests']"]) * 3


def encoder(tokenizer: PreTrainedTokenizerFast) -> Callable[[str], list[int]]:
    """text -> token ids as the model would have generated them (no special tokens)."""

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    return encode


def assert_art_trainable(trainable: list[list[bool] | None]) -> None:
    """Every trajectory of every recorded group had tokens to train by ART's own tokenizer (the
    recording backend's `trainable`; None where it could not run ART's tokenizer: no torch).
    No group at all passes: callers check how many groups trained."""
    if None in trainable and os.environ.get(REQUIRE_TORCH_ENV) != "1":
        pytest.skip("torch is not installed: trainability by ART's tokenizer not checked")
    assert None not in trainable, "the recording backend did not run ART's tokenizer"
    assert all(all(group) for group in trainable), trainable  # type: ignore[arg-type]
