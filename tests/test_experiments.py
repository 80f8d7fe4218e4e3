"""Experiments are separate (each its own ART model, resume state and W&B run), and every GRPO
parameter of `backend.train()` is a flag that reaches it unchanged."""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import art
import pytest
from art.serverless.backend import ServerlessBackend

from common.config import ExperimentConfig
from common.errors import ConfigError
from common.flags import parse_config
from tests.conftest import model_dir, pipeline_state, train_calls, trainer_args
from tests.fakes.scripted_llm import ScriptedLLM
from trainer.backend import TRAIN_PARAMS, train_kwargs
from trainer.loop import run_training
from trainer.observability import WandbLogger
from trainer.setup import _write_resolved_config
from trainer.state import PipelineState, check_resume, fresh_state

# LocalBackend.train's keyword parameters that are deliberately not flags (see trainer/backend.py)
NOT_EXPOSED = {"loss_fn_config", "adam_params", "save_checkpoint", "verbose"}


def art_local_train_defaults() -> dict[str, Any]:
    """LocalBackend.train's keyword-only parameters and their defaults, read from ART's source
    (importing art.local needs torch and a GPU stack)."""
    source = Path(art.__file__).parent / "local" / "backend.py"
    tree = ast.parse(source.read_text())
    [backend] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LocalBackend"]
    [train] = [n for n in backend.body if isinstance(n, ast.AsyncFunctionDef) and n.name == "train"]
    return {
        arg.arg: ast.literal_eval(default)
        for arg, default in zip(train.args.kwonlyargs, train.args.kw_defaults, strict=True)
    }


def test_grpo_flags_are_art_local_backend_train_parameters_with_its_defaults() -> None:
    art_defaults = art_local_train_defaults()
    config = ExperimentConfig()
    assert set(TRAIN_PARAMS) | NOT_EXPOSED == set(art_defaults), "ART's train() changed"
    for name in TRAIN_PARAMS:
        assert getattr(config, name) == art_defaults[name], name
    assert not set(TRAIN_PARAMS) - set(ExperimentConfig.model_fields)


# One value per flag, none of them ART's default.
GRPO_FLAGS: dict[str, Any] = {
    "learning_rate": 1e-5,
    "loss_fn": "ppo",
    "normalize_advantages": False,
    "kl_penalty_coef": 0.05,
    "kl_penalty_reference_step": 0,
    "kl_ref_adapter_path": "/tmp/ref-adapter",
    "epsilon": 0.2,
    "epsilon_high": 0.28,
    "advantage_balance": 0.1,
    "scale_rewards": False,
    "importance_sampling_level": "sequence",
    "max_negative_advantage_importance_sampling_weight": 2.5,
    "mask_prob_ratio": True,
    "kimi_k2_tau": 0.5,
    "precalculate_logprobs": True,
    "allow_training_without_logprobs": True,
    "plot_tensors": True,
    "truncated_importance_sampling": 3.0,
    "scale_learning_rate_by_reward_std_dev": True,
    "logprob_calculation_chunk_size": 512,
    "packed_sequence_length": 8192,
    "num_trajectories_learning_rate_multiplier_power": 0.5,
}


def test_every_grpo_flag_reaches_train_unchanged(
    redis_url: str, llm: ScriptedLLM, dataset: Path, tmp_path: Path
) -> None:
    assert set(GRPO_FLAGS) == set(TRAIN_PARAMS)
    art_path = tmp_path / "art"
    args = trainer_args(
        redis_url, llm.url, dataset, art_path, local_workers=1, dataset_size=2, **GRPO_FLAGS
    )
    config = parse_config(args, ExperimentConfig, "t")
    asyncio.run(run_training(config))
    [call] = train_calls(art_path)
    assert call["kwargs"] == GRPO_FLAGS  # through the flags, the config and the backend call


def test_a_narrower_train_signature_gets_what_it_accepts_and_refuses_the_rest() -> None:
    serverless = object.__new__(ServerlessBackend)  # ART's type, its real train() signature
    kwargs = train_kwargs(ExperimentConfig(loss_fn="ppo", epsilon=0.2), serverless)
    assert kwargs["ppo"] is True and kwargs["epsilon"] == 0.2 and "loss_fn" not in kwargs
    assert "kl_penalty_coef" not in kwargs  # at its default: left out
    with pytest.raises(ConfigError, match="--kl-penalty-coef 0.1: ServerlessBackend.train"):
        train_kwargs(ExperimentConfig(kl_penalty_coef=0.1), serverless)


# --- Experiments --------------------------------------------------------------------------


def _run(redis_url: str, llm: ScriptedLLM, dataset: Path, art_path: Path, **overrides: Any):
    args = trainer_args(
        redis_url, llm.url, dataset, art_path, local_workers=1, wandb_offline=True, **overrides
    )
    return asyncio.run(run_training(parse_config(args, ExperimentConfig, "t")))


def test_each_experiment_trains_its_own_model_and_w_b_run(
    redis_url: str, llm: ScriptedLLM, dataset: Path, tmp_path: Path
) -> None:
    art_path = tmp_path / "art"
    first = _run(redis_url, llm, dataset, art_path, experiment_name="baseline")
    second = _run(redis_url, llm, dataset, art_path, experiment_name="cot_v1", learning_rate=1e-5)

    # Same --model-name, two experiments: neither resumed the other.
    assert first.run_key != second.run_key
    for name, steps in (("baseline", 2), ("cot_v1", 2)):
        calls = train_calls(art_path, name)
        assert [c["step"] for c in calls] == list(range(1, steps + 1)), name
        # The second experiment started from the base model, not from the first one's weights.
        assert calls[0]["groups"][0]["policy_versions"][0] == 0, name
        written = json.loads((model_dir(art_path, name) / "pipeline_config.json").read_text())
        assert written["experiment_name"] == name
        # Its own W&B run (offline here), beside its model: id = its run key.
        [run] = (model_dir(art_path, name) / "wandb").glob("offline-run-*")
        state = pipeline_state(art_path, name)
        assert run.name.endswith(state["run_key"])
        [record] = run.glob("*.wandb")
        data = record.read_bytes()
        assert written["config_hash"].encode() in data and f"-{name}".encode() in data
    assert {c["kwargs"]["learning_rate"] for c in train_calls(art_path, "cot_v1")} == {1e-5}
    assert model_dir(art_path, "baseline") != model_dir(art_path, "cot_v1")
    assert {f"r2e-rlm-qwen3-14b-baseline@{s}" for s in (0, 1)} <= llm.models_seen
    assert {f"r2e-rlm-qwen3-14b-cot_v1@{s}" for s in (0, 1)} <= llm.models_seen

    # The same experiment name again: a resume (its schedule is done, nothing trains again).
    again = _run(redis_url, llm, dataset, art_path, experiment_name="baseline")
    assert again.run_key == first.run_key and len(train_calls(art_path, "baseline")) == 2


@pytest.mark.slow
def test_deleting_state_json_alone_keeps_the_weights(
    redis_url: str,
    llm: ScriptedLLM,
    dataset: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What the README says about restarting: only a new directory starts from the base model."""
    art_path = tmp_path / "art"
    _run(redis_url, llm, dataset, art_path)
    (model_dir(art_path) / "state.json").unlink()
    with caplog.at_level(logging.WARNING, logger="trainer.state"):
        _run(redis_url, llm, dataset, art_path)
    assert "checkpoints up to step 2" in caplog.text and "delete the whole directory" in caplog.text
    restarted = train_calls(art_path)[2:]
    assert [c["groups"][0]["policy_versions"][0] for c in restarted] == [2, 3]  # not from 0
    shutil.rmtree(model_dir(art_path))
    _run(redis_url, llm, dataset, art_path)
    assert train_calls(art_path)[0]["groups"][0]["policy_versions"][0] == 0


def test_names_that_cannot_name_a_model_are_refused() -> None:
    for bad in ("a@b", "a/b", "", "-x", "has space"):
        with pytest.raises(ValueError, match="letters, digits"):
            ExperimentConfig(experiment_name=bad)
    with pytest.raises(ValueError, match="letters, digits"):
        ExperimentConfig(model_name="org/model")
    config = ExperimentConfig(experiment_name="cot_prompt_v1")
    assert config.art_model_name == "r2e-rlm-qwen3-14b-cot_prompt_v1"
    assert config.model_dir == Path(".art/rlm-training/models/r2e-rlm-qwen3-14b-cot_prompt_v1")


def test_resume_does_not_report_a_password_as_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = "redis://:s3cret-0123456789abcdef@redis-host:6379/0"
    config = ExperimentConfig(redis_url=url, art_path=str(tmp_path))
    _write_resolved_config(config, None)  # redacted, as the trainer writes it
    state = PipelineState.fresh(config.run_id, 0, config)
    with caplog.at_level(logging.WARNING, logger="trainer.state"):
        check_resume(state, config.model_copy(update={"learning_rate": 1e-5}), _config(config))
    assert "changed: learning_rate" in caplog.text and "redis_url" not in caplog.text, caplog.text


def _config(config: ExperimentConfig) -> Path:
    return config.model_dir / "pipeline_config.json"


def test_online_w_b_runs_are_grouped_by_model_and_hold_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # online: ART creates the run at model.log
    config = ExperimentConfig(experiment_name="cot_v1", art_path=str(tmp_path))
    model = art.TrainableModel(
        name=config.art_model_name, project=config.project, base_model=config.base_model
    )
    WandbLogger(config, model, "run-key")
    assert os.environ["WANDB_RUN_GROUP"] == "r2e-rlm-qwen3-14b"
    run_config = model._wandb_config  # what ART passes to wandb.init(id=model.name, ...)
    assert run_config == {**config.redacted_dump(), "config_hash": config.config_hash}
    assert model.name == "r2e-rlm-qwen3-14b-cot_v1"


def test_a_run_in_the_shared_layout_is_never_silently_restarted(tmp_path: Path) -> None:
    config = ExperimentConfig(art_path=str(tmp_path), experiment_name="cot_v1")
    legacy = config.model_dir.parent / "r2e-rlm-qwen3-14b"  # where every experiment used to go
    legacy.mkdir(parents=True)
    (legacy / "state.json").write_text(json.dumps({"rlm_pipeline": {"run_key": "k"}}))
    (legacy / "pipeline_config.json").write_text(json.dumps({"experiment_name": "cot_v1"}))
    with pytest.raises(ConfigError, match=f"`mv {legacy} {config.model_dir}` to resume it"):
        fresh_state(config, 0)
    other = config.model_copy(update={"experiment_name": "baseline"})
    assert fresh_state(other, 0).last_completed_step == -1  # another experiment: a fresh run
