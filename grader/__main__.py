"""`python -m grader`: serve the grading service. Needs a Docker engine and GRADER_TOKEN."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys

from common.flags import parse_config
from common.grading import TOKEN_ENV
from common.log import setup_logging
from common.service_config import GraderConfig

log = logging.getLogger("grader")


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv, GraderConfig, prog="python -m grader")
    setup_logging()
    from grader.container import ContainerLimits, engine_available, remove_leftovers
    from grader.server import GraderState, serve

    token = os.environ.get(TOKEN_ENV, "")
    if len(token) < 16:
        log.error("set %s to a secret of 16+ characters (e.g. `openssl rand -hex 24`)", TOKEN_ENV)
        return 2
    problem = engine_available()
    if problem is not None:
        log.error(
            "no Docker engine answers (%s): start dockerd or mount /var/run/docker.sock", problem
        )
        return 2
    label = config.label or f"{socket.gethostname()}-{config.port}"
    removed = remove_leftovers(label)
    if removed:
        log.warning("removed %d containers an earlier grader left behind", removed)
    state = GraderState(
        token=token,
        label=label,
        limits=ContainerLimits(memory=config.memory, cpus=config.cpus, pids=config.pids),
        max_concurrent=config.max_concurrent,
        max_queued=config.max_queued,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(state, config.host, config.port, stop)

    try:
        asyncio.run(run())
    finally:
        removed = remove_leftovers(label)  # gradings cut short by the stop
        if removed:
            log.info("removed %d grading containers on the way out", removed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
