"""The trainer: owns the ART model and backend, dispatches scenario groups to the queue,
collects trajectories, assembles groups, trains, logs and checkpoints.

The Python API, for wrapper scripts that customise a run in code (see `examples/`):

    from common.config import ExperimentConfig
    from common.flags import parse_config
    from trainer import train

    config = parse_config(sys.argv[1:], ExperimentConfig, prog="my_experiment.py")
    config.reward_fn = partial_test_reward
    sys.exit(train(config))

`python -m trainer` and `python train.py` are `train()` with the flags parsed from the command
line; `trainer.loop.run_training(config)` is the loop itself, as a coroutine.
"""

from __future__ import annotations

from common.config import ExperimentConfig


def train(config: ExperimentConfig) -> int:
    """Run training to the end of the schedule, as the command line does (logging, SIGTERM,
    one-line errors). Returns the process exit status: 0 done, 2 bad input, 3 Redis lost."""
    from trainer.__main__ import run

    return run(config)


__all__ = ["ExperimentConfig", "train"]
