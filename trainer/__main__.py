"""`python -m trainer` (and `python train.py`): parse the flags first (so `--help` is instant),
then import and train."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from common.config import ExperimentConfig
from common.errors import ConfigError, TaskError
from common.flags import parse_config
from common.log import setup_logging


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`: local workers and Redis stop


def main(argv: list[str] | None = None, prog: str = "python -m trainer") -> int:
    return run(parse_config(argv, ExperimentConfig, prog=prog))


def run(config: ExperimentConfig) -> int:
    """Train with `config`; returns the exit status (see `trainer.train`)."""
    setup_logging()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch on import
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    from redis.exceptions import ConnectionError as RedisConnectionError

    from trainer.loop import run_training

    try:
        asyncio.run(run_training(config))
    except (ConfigError, TaskError) as exc:
        logging.getLogger("trainer").error("%s", exc)
        return 2
    except RedisConnectionError as exc:
        logging.getLogger("trainer").error(
            "Redis unreachable for more than --redis-outage-s %.0fs (%s); stopped. Start the "
            "trainer again with the same flags once Redis is back: it resumes",
            config.redis_outage_s,
            exc,
        )
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
