"""Client of the grading service, used by rollout workers and by `python -m grader.validate`.

Network errors and 5xx answers are retried with backoff; every failure that remains is raised as
`GraderError`, which callers report as an infrastructure failure, never as a reward.
"""

from __future__ import annotations

import asyncio
import logging
import os

import httpx

from common.errors import GraderError
from common.grading import TOKEN_ENV, GradeReport, GradeRequest
from common.tls import tls_context

log = logging.getLogger(__name__)

_RETRIED = {429, 502, 503, 504}


class GraderClient:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        retries: int = 2,
        backoff_s: float = 2.0,
        timeout_s: float = 600.0,
    ) -> None:
        token = token if token is not None else os.environ.get(TOKEN_ENV, "")
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self._client = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            verify=tls_context(),
            timeout=httpx.Timeout(timeout_s, connect=10.0),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def grade(self, request: GradeRequest) -> GradeReport:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                response = await self._client.post("/grade", content=request.model_dump_json())
            except httpx.HTTPError as exc:
                problem = f"grader at {self.url} unreachable: {exc!r}"
            else:
                if response.status_code == 200:
                    return GradeReport.model_validate_json(response.content)
                problem = f"grader answered {response.status_code}: {_error_text(response)}"
                if response.status_code not in _RETRIED:
                    raise GraderError(problem)
            if attempt == self.retries:
                raise GraderError(problem)
            log.warning("%s; retry %d in %.1fs", problem, attempt + 1, delay)
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['type']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return response.text[:300]
