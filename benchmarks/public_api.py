"""Public API throughput: requests per second on /v1/models and /v1/pricing with 64 concurrent clients.

Floor: a bare FastAPI route returning the same bytes, served and loaded the same way in the same run.
Target: at least 0.7x the floor, with exactly 0 chain queries during the run.
"""

from __future__ import annotations

import asyncio

import httpx

from benchmarks.common import Result, now, raw_request, start_child, stop_child

CLIENTS = 64
SECONDS = 4.0


async def load(port: int, path: str, seconds: float) -> float:
    """Keep-alive HTTP/1.1 GETs on CLIENTS connections; a minimal client so that the server is the limit."""
    count = 0
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CLIENTS)]
    for reader, writer in connections:
        assert (await raw_request(reader, writer, "GET", path))[0] == 200
    deadline = now() + seconds

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        while now() < deadline:
            assert (await raw_request(reader, writer, "GET", path))[0] == 200
            count += 1

    started = now()
    await asyncio.gather(*(worker(r, w) for r, w in connections))
    elapsed = now() - started
    for _, writer in connections:
        writer.close()
    return count / elapsed


async def measure(mode: str, path: str) -> tuple[float, int]:
    proc, ready = start_child("benchmarks.serve_public", "--mode", mode)
    try:
        rps = await load(ready["port"], path, SECONDS)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ready['port']}") as client:
            queries = (await client.get("/bench/chain-queries")).json()["queries"]
        return rps, queries
    finally:
        stop_child(proc)


async def main() -> list[Result]:
    results = []
    for path in ("/v1/models", "/v1/pricing"):
        floor, _ = await measure("bare", path)
        rps, queries = await measure("dapi", path)
        result = Result(f"public API {path}", rps, "req/s", floor=floor, target=">= 0.7x floor, 0 chain queries",
                        extra={"chain_queries": queries, "clients": CLIENTS})
        result.report()
        results.append(result)
    return results


if __name__ == "__main__":
    asyncio.run(main())
