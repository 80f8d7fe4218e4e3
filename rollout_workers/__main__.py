"""`python -m rollout_workers`: start one stateless rollout worker.

Flags are parsed before the heavy imports, so `--help` answers at once. The worker serves the
evaluation queue beside `--queue-name` first (RQ takes from its queues in order), so evaluation
groups never wait behind training ones.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid

from common.config import redact_url
from common.flags import parse_config
from common.log import setup_logging
from common.service_config import WorkerConfig


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv, WorkerConfig, prog="python -m rollout_workers")
    setup_logging()
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    from common.garbage import manual_collection
    from common.health import HealthMonitor
    from common.queue import SERIALIZER, connect, eval_queue_name, rollout_queue
    from rollout_workers.job import warm_up
    from rollout_workers.worker import RolloutWorker

    connection = connect(config.redis_url, config.redis_outage_s)
    try:  # at start, without retries: a wrong URL or password is said at once
        Redis.from_url(config.redis_url, socket_connect_timeout=5).ping()
    except RedisConnectionError as exc:
        logging.getLogger(__name__).error(
            "cannot reach Redis at %s (%s): start it or pass --redis-url",
            redact_url(config.redis_url),
            exc,
        )
        return 2
    warm_up()
    monitor = HealthMonitor(
        config.health_check_interval, config.max_child_processes, config.max_tmp_usage_gb
    )
    monitor.start()
    # Unique even for containers that share the host's name and all run as pid 1.
    name = (
        config.worker_name or f"rollout-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )
    queues = [
        rollout_queue(eval_queue_name(config.queue_name), connection),
        rollout_queue(config.queue_name, connection),
    ]
    try:
        with manual_collection(config.manual_gc) as collection:
            worker = RolloutWorker(
                queues, connection=connection, name=name, serializer=SERIALIZER,
                collection=collection,
            )  # fmt: skip
            worker.work(burst=config.burst, with_scheduler=False, logging_level="WARNING")
    except RedisConnectionError as exc:
        logging.getLogger(__name__).error(
            "Redis at %s unreachable past --redis-outage-s (%.0fs: %s); worker stopped",
            redact_url(config.redis_url), config.redis_outage_s, exc,
        )  # fmt: skip
        return 3
    finally:
        monitor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
