"""The inference gateway: an authenticated reverse proxy to the policy's endpoint.

Under LocalBackend, vLLM listens on the trainer host's loopback only. The gateway exposes it to
remote workers: requests with the gateway's bearer token are passed through unchanged (body,
model name `name@step`, status, the Choices with their logprobs) with vLLM's own key swapped in.
While the trainer trains (vLLM sleeps on a single GPU) it answers 503 with `Retry-After` and
`X-Policy-Sleeping: 1`; workers wait and retry instead of failing the rollout.
"""

from __future__ import annotations

import hmac
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

log = logging.getLogger(__name__)

GATEWAY_TOKEN_ENV = "GATEWAY_TOKEN"
SLEEPING_HEADER = "X-Policy-Sleeping"
RETRY_AFTER_S = 5
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
}


class Gateway(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def __init__(
        self,
        address: tuple[str, int],
        upstream: str,
        token: str,
        upstream_key: str,
        retry_after_s: float = RETRY_AFTER_S,
    ) -> None:
        super().__init__(address, _Handler)
        self.upstream = upstream.rstrip("/")
        self.token = token
        self.upstream_key = upstream_key
        self.retry_after_s = retry_after_s
        self.sleeping = threading.Event()
        self.turned_away = 0  # requests answered "sleeping"
        self.client = httpx.Client(timeout=httpx.Timeout(3600.0, connect=10.0))
        self._thread = threading.Thread(target=self.serve_forever, name="gateway", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()
        log.info("inference gateway on %s -> %s", self.url, self.upstream)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.client.close()


class _Handler(BaseHTTPRequestHandler):
    server: Gateway
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._proxy("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._proxy("POST")

    def _proxy(self, method: str) -> None:
        gateway = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        supplied = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(supplied.encode(), gateway.token.encode()):
            self._reply(401, b'{"error": {"message": "wrong or missing gateway token"}}', {})
            return
        if gateway.sleeping.is_set():
            gateway.turned_away += 1
            headers = {"Retry-After": str(gateway.retry_after_s), SLEEPING_HEADER: "1"}
            self._reply(503, b'{"error": {"message": "the policy is training; retry"}}', headers)
            return
        path = self.path.removeprefix("/v1") if gateway.upstream.endswith("/v1") else self.path
        headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
        if gateway.upstream_key:
            headers["Authorization"] = f"Bearer {gateway.upstream_key}"
        try:
            response = gateway.client.request(
                method, gateway.upstream + path, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            self._reply(
                502, f'{{"error": {{"message": "upstream unreachable: {exc!r}"}}}}'.encode(), {}
            )
            return
        passed = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
        self._reply(response.status_code, response.content, passed)

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)
