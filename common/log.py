"""One logger setup for every process: plain lines for people, JSON lines for aggregators.
Every line passes through `redact`: a URL's password (`redis://:PASSWORD@host`) never reaches a
log, whichever module formatted it (ours, redis-py's, RQ's)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

# scheme://user:PASSWORD@ (the password may hold '@' or '/' when not percent-encoded)
_URL_PASSWORD = re.compile(r"""(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^\s"']+@""")


def redact(text: str) -> str:
    return _URL_PASSWORD.sub(r"\1***@", text)


class _Redacting(logging.Formatter):
    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in ("run", "step", "rollout", "worker", "job"):
            if hasattr(record, field):
                payload[field] = getattr(record, field)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def setup_logging(level: str = "INFO", json_mode: bool | None = None) -> None:
    """Configure the root logger once. `LOG_JSON=1` switches to JSON lines."""
    if json_mode is None:
        json_mode = os.environ.get("LOG_JSON", "") == "1"
    handler = logging.StreamHandler(sys.stderr)
    inner = (
        _JsonFormatter()
        if json_mode
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler.setFormatter(_Redacting(inner))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("LOG_LEVEL", level))
    for noisy in ("httpx", "httpcore", "rq.worker", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
