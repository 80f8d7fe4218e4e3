"""The trainer: owns the ART model and backend, dispatches scenario groups to the queue,
collects trajectories, assembles groups, trains, logs and checkpoints.

`python -m trainer` runs it; `trainer.loop.run_training(config)` is the same loop as a function.
"""
