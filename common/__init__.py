"""Shared by every process: config, wire format, Redis keys, errors, health, prompts, rewards.

Importing `common` never pulls in `art`, `torch`, `transformers` or `openai`: rollout workers and
the grader stay small and start fast (tests/test_light_imports.py checks it).
"""
