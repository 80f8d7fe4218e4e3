"""Stateless RQ workers that run REPL rollouts against the policy endpoint.

Light by design: no `art`, no torch. `python -m rollout_workers` starts one.
"""
