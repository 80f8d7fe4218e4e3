"""What a run leaves in Redis: bounded while it trains, expiring once it is finished.

Stream entries go as their step is checkpointed (`ResultCollector.ack`); when the run ends
every key it wrote gets a time to live (`--keys-ttl-days`)."""

from __future__ import annotations

import logging

from redis import Redis

from common import keys

log = logging.getLogger(__name__)


def expire_run_keys(connection: Redis, run_id: str, ttl_s: float) -> int:
    """Give every key of the finished run a time to live (never a longer one than it had);
    returns how many."""
    count = 0
    for pattern in keys.run_key_patterns(run_id):
        with connection.pipeline(transaction=False) as pipe:
            for key in connection.scan_iter(match=pattern, count=500):
                pipe.expire(key, int(ttl_s), nx=True)  # keys that would live forever
                pipe.expire(key, int(ttl_s), lt=True)  # and those that would outlive it
                count += 1
            pipe.execute()
    log.info("run %s finished: its %d Redis keys expire in %.1f days", run_id, count, ttl_s / 86400)
    return count


def redis_used_memory_mb(connection: Redis) -> float:
    return float(connection.info("memory")["used_memory"]) / 1e6
