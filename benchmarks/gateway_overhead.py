"""What the inference gateway adds: requests/s and latency through it vs straight to the policy.

The policy is the scripted LLM (`tests/fakes/scripted_llm.py`, the same chat completion with
logprobs every time). The LLM, the gateway and this client run as three processes (in one, they
would fight over one GIL). Each row sends the same requests at a given concurrency, first direct,
then through the gateway; "added" is the gateway's p50/p99 minus the direct one. They share the
machine's cores, so compare rows measured on the same machine. `--gateway-root DIR` imports
`trainer.gateway` from another checkout (say, `git archive HEAD | tar -x -C DIR`) for a before and
after comparison.

    uv run python benchmarks/gateway_overhead.py [--requests 400] [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.services import free_port  # noqa: E402

TOKEN = "benchmark-gateway-token-0123456789"
BODY = {
    "model": "r2e-rlm@3",
    "messages": [{"role": "user", "content": "x " * 2000}],  # a mid-sized prompt (~8 KB)
    "logprobs": True,
}


async def load(url: str, requests: int, concurrency: int) -> tuple[float, list[float]]:
    """(requests/s, per-request latencies in ms) for `requests` POSTs from `concurrency` clients,
    one request at a time each, as workers send them. One httpx client per lane: a single
    client shared by 32 callers measures httpcore's pool contention, not the server."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def lane(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            queue.get_nowait()
            began = time.perf_counter()
            response = await client.post(url, json=BODY, headers=headers)
            latencies.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200, response.text[:200]

    clients = [httpx.AsyncClient(timeout=60) for _ in range(concurrency)]
    try:
        for client in clients:  # warm each connection and the path
            await client.post(url, json=BODY, headers=headers)
        began = time.perf_counter()
        await asyncio.gather(*(lane(client) for client in clients))
        elapsed = time.perf_counter() - began
    finally:
        for client in clients:
            await client.aclose()
    return requests / elapsed, latencies


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


GATEWAY = """
import sys, threading
sys.path.insert(0, sys.argv[1])
from trainer.gateway import Gateway
gateway = Gateway(("127.0.0.1", 0), sys.argv[2], sys.argv[3], upstream_key="vllm-key")
gateway.start()
print(gateway.server_address[1], flush=True)
threading.Event().wait()
"""


def spawn(argv: list[str]) -> tuple[subprocess.Popen, str]:
    """A server process and the first line it prints (its port or URL)."""
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--gateway-root", default=str(ROOT), help="checkout to import it from")
    args = parser.parse_args()
    llm_port = free_port()
    llm, _ = spawn([sys.executable, "-m", "tests.fakes.scripted_llm", "--port", str(llm_port)])
    llm_url = f"http://127.0.0.1:{llm_port}/v1"
    gateway, port = spawn([sys.executable, "-c", GATEWAY, args.gateway_root, llm_url, TOKEN])
    rows = []
    try:
        for concurrency in args.concurrency:
            direct = asyncio.run(load(f"{llm_url}/chat/completions", args.requests, concurrency))
            through = asyncio.run(
                load(f"http://127.0.0.1:{port}/v1/chat/completions", args.requests, concurrency)
            )
            rows.append((concurrency, direct, through))
    finally:
        for process in (gateway, llm):
            process.kill()
            process.wait()
    print(f"gateway from {args.gateway_root}; {args.requests} chat completions per row")
    print(
        f"{'conc':>4} | {'direct req/s':>12} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'gateway req/s':>13} {'p50 ms':>7} {'p99 ms':>7} | {'added p50':>9} {'added p99':>9}"
    )
    for concurrency, (d_rate, d_lat), (g_rate, g_lat) in rows:
        d50, d99 = percentile(d_lat, 50), percentile(d_lat, 99)
        g50, g99 = percentile(g_lat, 50), percentile(g_lat, 99)
        print(
            f"{concurrency:>4} | {d_rate:>12.0f} {d50:>7.2f} {d99:>7.2f} | "
            f"{g_rate:>13.0f} {g50:>7.2f} {g99:>7.2f} | {g50 - d50:>9.2f} {g99 - d99:>9.2f}"
        )


if __name__ == "__main__":
    main()
