"""The inference gateway: an authenticated reverse proxy to the policy's endpoint.

Under LocalBackend, vLLM listens on the trainer host's loopback only. The gateway exposes it to
remote workers: requests with the gateway's bearer token are passed through unchanged (body,
model name `name@step`, status, the Choices with their logprobs) with vLLM's own key swapped in.
While the trainer trains (vLLM sleeps on a single GPU) it holds each request until the policy
wakes, and forwards it then; one held past `hold_s` gets 503 with `Retry-After` and
`X-Policy-Sleeping: 1`, and the worker asks again instead of failing the rollout.

It faces the network, so it trusts nothing a client sends: the token is checked before a byte of
the body is read (a refused connection is closed, its body never read), bodies are bounded, reading
headers and bodies and each upstream call have time limits, and only the three inference routes
workers use are forwarded, by their canonical path, never the client's string: vLLM's `/sleep`,
`/wake_up` and LoRA load/unload stay unreachable. aiohttp serves it on an event loop of its own
thread, so gateway traffic never stalls the trainer's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import posixpath
import socket
import threading
from urllib.parse import unquote

import aiohttp
from aiohttp import web

log = logging.getLogger(__name__)

GATEWAY_TOKEN_ENV = "GATEWAY_TOKEN"
SLEEPING_HEADER = "X-Policy-Sleeping"
HOLD_S = 10.0  # a request held longer than this while the policy trains gets 503 (under
# the workers' --request-timeout-s, so a long train() never times a request out)
RETRY_AFTER_S = 1
# The only routes forwarded: canonical path -> the one method it answers.
ROUTES = {
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/models": "GET",
}
MAX_BODY_BYTES = 16 << 20  # a 28k-token conversation is well under 1 MiB of JSON
READ_TIMEOUT_S = 60.0  # to receive one request body
IDLE_TIMEOUT_S = 75.0  # a connection that completes no request header in this long is closed
UPSTREAM_TIMEOUT_S = 1800.0  # one completion; above the workers' --request-timeout-s default
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "date",
    "server",
}


class Gateway:
    """`Gateway(address, upstream, token, upstream_key)`; `.start()`, `.stop()`; the trainer
    calls `.sleep()` before it trains and `.wake()` after (`.sleeping` says which). The socket is
    bound at construction, so `.server_address` (host, port) and `.url` are known before
    `.start()`."""

    def __init__(
        self,
        address: tuple[str, int],
        upstream: str,
        token: str,
        upstream_key: str,
        retry_after_s: float = RETRY_AFTER_S,
        hold_s: float = HOLD_S,
        max_body_bytes: int = MAX_BODY_BYTES,
        read_timeout_s: float = READ_TIMEOUT_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        upstream_timeout_s: float = UPSTREAM_TIMEOUT_S,
    ) -> None:
        if not token:
            raise ValueError(f"the gateway needs a token: set {GATEWAY_TOKEN_ENV}")
        # vLLM's base URL usually ends in /v1; the routes carry it themselves.
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.token = token
        self.upstream_key = upstream_key
        self.retry_after_s = retry_after_s
        self.hold_s = hold_s
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.upstream_timeout_s = upstream_timeout_s
        self.sleeping = threading.Event()
        self.held = 0  # requests held while the policy slept
        self.turned_away = 0  # requests answered "sleeping" (held past hold_s)
        self._awake: asyncio.Event | None = None  # the server loop's view of `sleeping`
        self._socket = socket.create_server(address, backlog=512)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="gateway", daemon=True)

    @property
    def server_address(self) -> tuple[str, int]:
        host, port = self._socket.getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError(f"the inference gateway did not start: {self._error}")
        log.info("inference gateway on %s -> %s", self.url, self.upstream)

    def sleep(self) -> None:
        """The policy is about to train: hold requests from now on."""
        self.sleeping.set()
        self._tell_loop()

    def wake(self) -> None:
        """The policy serves again: the held requests go through."""
        self.sleeping.clear()
        self._tell_loop()

    def _tell_loop(self) -> None:
        loop, awake = self._loop, self._awake
        if loop is None or awake is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already stopped
            loop.call_soon_threadsafe(
                lambda: awake.clear() if self.sleeping.is_set() else awake.set()
            )

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(30)
        self._socket.close()

    # --- the server's own thread ---

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            runner, session = loop.run_until_complete(self._open())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(session.close())
            loop.close()

    async def _open(self) -> tuple[web.AppRunner, aiohttp.ClientSession]:
        self._awake = asyncio.Event()
        if not self.sleeping.is_set():
            self._awake.set()
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.upstream_timeout_s, sock_connect=10.0),
            connector=aiohttp.TCPConnector(limit=1024),
        )
        proxy = _Proxy(self, session)
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", proxy.handle, expect_handler=proxy.expect)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            # The idle timer also runs while a request's header trickles in (slowloris).
            keepalive_timeout=self.idle_timeout_s,
            # Never read a refused request's body to keep the connection: close it instead.
            lingering_time=0,
            shutdown_timeout=5.0,
        )
        await runner.setup()
        await web.SockSite(runner, self._socket).start()
        return runner, session


def canonical_route(raw_target: str) -> str | None:
    """The allowed route a request target means, or None. Percent-decoding and dot segments are
    resolved first, so `/v1/../sleep` and `/v1/%2e%2e/sleep` are `/sleep`: not forwarded."""
    path = raw_target.split("?", 1)[0].split("#", 1)[0]
    decoded = unquote(path)
    if "\\" in decoded or "\x00" in decoded:
        return None
    normal = posixpath.normpath("/" + decoded.lstrip("/"))
    return normal if normal in ROUTES else None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status, headers=headers)


class _Proxy:
    def __init__(self, gateway: Gateway, session: aiohttp.ClientSession) -> None:
        self.gateway = gateway
        self.session = session
        self.token = gateway.token.encode()

    def _authorised(self, request: web.BaseRequest) -> bool:
        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(supplied.encode(), self.token)

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue`: invite the body only from a client with the token."""
        if not self._authorised(request):
            return self._refuse(_error(401, "wrong or missing gateway token"))
        if (request.content_length or 0) > self.gateway.max_body_bytes:
            return self._refuse(self._too_large())
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own handler: the response starts after it
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        gateway = self.gateway
        if not self._authorised(request):  # before a byte of the body is read
            return self._refuse(_error(401, "wrong or missing gateway token"))
        route = canonical_route(request.raw_path)
        if route is None:
            return self._refuse(_error(404, "not an inference route of this gateway"))
        if request.method != ROUTES[route]:
            return self._refuse(_error(405, f"{route} answers {ROUTES[route]} only"))
        if (request.content_length or 0) > gateway.max_body_bytes:
            return self._refuse(self._too_large())
        try:
            body = await asyncio.wait_for(request.read(), gateway.read_timeout_s)
        except web.HTTPRequestEntityTooLarge:  # a chunked body past the limit
            return self._refuse(self._too_large())
        except TimeoutError:
            return self._refuse(_error(408, "the request body arrived too slowly"))
        if gateway.sleeping.is_set() and not await self._held_until_awake():
            gateway.turned_away += 1
            headers = {"Retry-After": f"{gateway.retry_after_s:g}", SLEEPING_HEADER: "1"}
            return _error(503, "the policy is training; retry", headers)
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        if gateway.upstream_key:
            headers["Authorization"] = f"Bearer {gateway.upstream_key}"
        try:
            async with self.session.request(
                request.method, gateway.upstream + route, data=body or None, headers=headers
            ) as upstream:
                content = await upstream.read()
                passed = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
                return web.Response(status=upstream.status, body=content, headers=passed)
        except TimeoutError:
            return _error(504, f"the policy did not answer in {gateway.upstream_timeout_s:g}s")
        except aiohttp.ClientError as exc:
            return _error(502, f"upstream unreachable: {type(exc).__name__}")

    async def _held_until_awake(self) -> bool:
        """Hold the request while the policy trains; False when it slept past `hold_s`."""
        awake = self.gateway._awake
        assert awake is not None  # set before the server starts
        self.gateway.held += 1
        try:
            await asyncio.wait_for(awake.wait(), self.gateway.hold_s)
        except TimeoutError:
            return False
        return True

    def _too_large(self) -> web.Response:
        return _error(413, f"request body over {self.gateway.max_body_bytes} bytes")

    @staticmethod
    def _refuse(response: web.Response) -> web.Response:
        response.force_close()  # its unread body, if any, is never read
        return response
