"""One TLS context per process for every HTTP client (policy, grader): loading the CA
certificates costs ~20 ms, too much to pay for each job."""

from __future__ import annotations

import functools
import ssl

import certifi


@functools.cache
def tls_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certifi.where())
