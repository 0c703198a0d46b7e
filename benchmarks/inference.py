"""Inference path performance: requests/s and time to first token through the executor and TA.

Three child processes (`benchmarks.serve_inference`): an ML node that answers a 200-token completion at
once, an executor server and a TA server (the real public app, `InferenceExecutor`, `TransferAgent`), the
TA drawing the executor server from the chain's ActiveParticipants. The load comes from this process:
64 concurrent keep-alive clients with a minimal HTTP/1.1 client and requests signed before the clock
starts (each needs a fresh Authorization), so that the servers, not the client, are measured.

* (a) requests/s of non-streaming requests: straight to the ML node (the floor), to the executor with
  the TA's headers signed here (one hop), through TA → executor (two hops).
* (b) time to first token (request written → first ``data: {`` byte received) of 64 concurrent streams,
  p50 and p99, for the same three paths; each hop's added latency is its p50/p99 minus the path
  without it.
* (c) chain queries per request after warm-up, counted by the fake chain of both servers. The chain's
  height stays fixed during the measurement, so the per-block caches are never refreshed.

Targets: each hop adds <= 5 ms p50 and <= 25 ms p99 to time to first token; TA → executor sustains
>= 0.3x the floor's requests/s; 0 chain queries per request in steady state.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from benchmarks.common import Result, now, start_child, stop_child
from benchmarks.serve_inference import CLIENT_KEY, EXECUTOR_KEY, MODEL, TA_KEY, TOKENS
from dapi.inference.signatures import dev_signed_bytes, sign, ta_signed_bytes

CLIENTS = 64
SECONDS = 3.0
ROUNDS = 2  # each path measured this often, alternating; the best round is kept (the machine is shared)
PATHS = ("direct", "executor", "ta")
FIRST_TOKEN = b"data: {"
CHUNKED_END = b"\r\n0\r\n\r\n"


@dataclass
class Servers:
    mlnode: int
    executor: int
    ta: int

    def port(self, path: str) -> int:
        return {"direct": self.mlnode, "executor": self.executor, "ta": self.ta}[path]


_serial = iter(range(10**12))


def signed_requests(path: str, count: int, *, stream: bool) -> list[bytes]:
    """`count` complete HTTP requests for `path`, each with a fresh timestamp and Authorization."""
    requests = []
    ta, executor = TA_KEY.address, EXECUTOR_KEY.address
    for _ in range(count):
        n = next(_serial)
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"benchmark request {n}"}],
                "max_tokens": TOKENS}
        if stream:
            body["stream"] = True
        raw = json.dumps(body, separators=(",", ":")).encode()
        headers = {"content-type": "application/json"}
        if path != "direct":
            ts = time.time_ns()
            authorization = sign(CLIENT_KEY, dev_signed_bytes(raw, ts, ta))
            headers |= {"authorization": authorization, "x-requester-address": CLIENT_KEY.address,
                        "x-timestamp": str(ts)}
        if path == "executor":  # what the TA would add (X-Transfer-Address names the TA, not the executor)
            headers |= {"x-inference-id": authorization, "x-seed": str(n % 2**31), "x-transfer-address": ta,
                        "x-ta-signature": sign(TA_KEY, ta_signed_bytes(raw, ts, ta, executor))}
        head = "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()) + f"content-length: {len(raw)}\r\n\r\n"
        requests.append(head.encode() + raw)
    return requests


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> float:
    """One request on a keep-alive connection; the seconds until the first token arrived (or the body)."""
    started = now()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if head[9:12] != b"200":
        raise RuntimeError(f"answered {head[:12]!r}: {(await reader.read(2000))[:300]!r}")
    length, chunked = None, False
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line[15:])
        elif line.startswith(b"transfer-encoding:") and b"chunked" in line:
            chunked = True
    first: float | None = None
    received, tail = 0, b""
    seen = b""
    while True:
        if length is not None and received >= length:
            break
        data = await reader.read(65536 if length is None else min(65536, length - received))
        if not data:
            raise RuntimeError("connection closed mid-answer")
        received += len(data)
        if first is None:
            seen = (seen + data)[-65536:]
            if FIRST_TOKEN in seen:
                first = now()
        tail = (tail + data)[-len(CHUNKED_END):]
        if chunked and tail == CHUNKED_END:
            break
        if not chunked and length is None:
            raise RuntimeError("answer with neither content-length nor chunked encoding")
    return (first or now()) - started


async def load(port: int, requests: list[bytes], clients: int = CLIENTS, *,
               reuse: bool = False) -> tuple[float, list[float], int]:
    """`clients` connections sending `requests` until SECONDS pass: requests/s, each request's TTFT, count.

    `reuse`: send the requests again when they run out (the ML node checks no signature).
    """
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(clients)]
    pending: Iterator[bytes] = itertools.cycle(requests) if reuse else iter(requests)
    ttfts: list[float] = []
    deadline = now() + SECONDS

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while now() < deadline:
            request = next(pending, None)
            if request is None:
                return
            ttfts.append(await exchange(reader, writer, request))

    started = now()
    await asyncio.gather(*(worker(r, w) for r, w in connections))
    elapsed = now() - started
    for _, writer in connections:
        writer.close()
    if len(ttfts) == len(requests):
        print(f"  (all {len(requests)} pre-signed requests used before {SECONDS} s: sign more)", flush=True)
    return len(ttfts) / elapsed, ttfts, len(ttfts)


def pool_size(path: str, stream: bool) -> int:
    # Enough for a few seconds at the rates seen on a 2-core machine, with a wide margin.
    if path == "direct":
        return CLIENTS * 4  # the ML node needs no signature: the same requests are sent again
    return 12_000 if not stream else 6_000


async def chain_counts(servers: Servers) -> tuple[int, int]:
    """Chain queries made so far by the executor and TA servers, and the messages they queued."""
    queries = messages = 0
    async with httpx.AsyncClient() as client:
        for port in (servers.executor, servers.ta):
            counts = (await client.get(f"http://127.0.0.1:{port}/bench/chain-queries")).json()
            queries += counts["queries"]
            messages += counts["messages"]
    return queries, messages


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def httpx_floor(port: int) -> float:
    """The direct floor measured with httpx, for comparison with the minimal client."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": TOKENS})
    count = 0
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=CLIENTS,
                                                     max_keepalive_connections=CLIENTS)) as client:
        deadline = now() + SECONDS

        async def worker() -> None:
            nonlocal count
            while now() < deadline:
                answer = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", content=body,
                                           headers={"content-type": "application/json"})
                assert answer.status_code == 200
                count += 1

        started = now()
        await asyncio.gather(*(worker() for _ in range(CLIENTS)))
        return count / (now() - started)


async def main() -> list[Result]:
    ml, ml_ready = start_child("benchmarks.serve_inference", "--role", "mlnode")
    ml_url = f"http://127.0.0.1:{ml_ready['port']}"
    ex, ex_ready = start_child("benchmarks.serve_inference", "--role", "executor", "--mlnode-url", ml_url)
    ex_url = f"http://127.0.0.1:{ex_ready['port']}"
    ta, ta_ready = start_child("benchmarks.serve_inference", "--role", "ta", "--executor-url", ex_url)
    servers = Servers(ml_ready["port"], ex_ready["port"], ta_ready["port"])
    try:
        return await measure(servers)
    finally:
        for proc in (ta, ex, ml):
            stop_child(proc)


async def measure(servers: Servers) -> list[Result]:
    # Warm-up: connections, the per-block caches of both servers, the executor draw's participants.
    # Eight connections first, then all: with 64 connections opened at once, the TA's first requests to
    # the executor sometimes failed with httpx ReadError (then the TA avoids its only executor for 30 s).
    for clients in (8, CLIENTS):
        for path in PATHS:
            for stream in (False, True):
                await load_once(servers.port(path), signed_requests(path, clients * 4, stream=stream), clients)
    queries_before, messages_before = await chain_counts(servers)
    served = 0
    rps: dict[str, float] = {}
    ttft: dict[str, tuple[float, float]] = {}
    for _ in range(ROUNDS):
        for path in PATHS:
            rate, _, count = await load(servers.port(path), signed_requests(path, pool_size(path, False),
                                                                              stream=False), reuse=path == "direct")
            served += count if path != "direct" else 0
            rps[path] = max(rps.get(path, 0.0), rate)
        for path in PATHS:
            _, ttfts, count = await load(servers.port(path), signed_requests(path, pool_size(path, True),
                                                                              stream=True), reuse=path == "direct")
            served += count if path != "direct" else 0
            p50, p99 = percentile(ttfts, 0.5) * 1000, percentile(ttfts, 0.99) * 1000
            if path not in ttft or p50 < ttft[path][0]:
                ttft[path] = (p50, p99)
    # One stream at a time: what each hop adds when nothing queues behind it.
    single: dict[str, float] = {}
    for path in PATHS:
        _, ttfts, count = await load(servers.port(path), signed_requests(path, 3000, stream=True), clients=1,
                                     reuse=path == "direct")
        served += count if path != "direct" else 0
        single[path] = percentile(ttfts, 0.5) * 1000
    queries_after, messages_after = await chain_counts(servers)
    floor_httpx = await httpx_floor(servers.mlnode)

    results = [
        Result("inference non-streaming, executor only", rps["executor"], "req/s", floor=rps["direct"],
               target="(reported)", extra={"clients": CLIENTS, "floor_with_httpx": round(floor_httpx)}),
        Result("inference non-streaming, TA -> executor", rps["ta"], "req/s", floor=rps["direct"],
               target=">= 0.3x floor", extra={"clients": CLIENTS, "floor_with_httpx": round(floor_httpx),
                                               "ratio_to_httpx_floor": round(rps["ta"] / floor_httpx, 2)}),
    ]
    below = {"executor": "direct", "ta": "executor"}
    for path, name in (("executor", "executor hop"), ("ta", "TA hop (TA -> executor vs executor only)")):
        for i, label in ((0, "p50"), (1, "p99")):
            limit = 5 if label == "p50" else 25
            added = ttft[path][i] - ttft[below[path]][i]
            extra = {"added_ms": round(added, 2)}
            if label == "p50":
                extra["added_ms_one_stream"] = round(single[path] - single[below[path]], 2)
            results.append(Result(f"inference TTFT {label}, {CLIENTS} streams, {name}", ttft[path][i], "ms",
                                  floor=ttft[below[path]][i], target=f"adds <= {limit} ms", extra=extra))
    per_request = (queries_after - queries_before) / served
    results.append(Result("inference chain queries per request (steady state, fixed height)", per_request,
                          "queries/request", target="0",
                          extra={"requests": served, "queries": queries_after - queries_before,
                                 "messages_queued": messages_after - messages_before,
                                 "ttft_direct_p50_ms": round(ttft["direct"][0], 2),
                                 "ttft_direct_p99_ms": round(ttft["direct"][1], 2),
                                 "ttft_one_stream_p50_ms": {k: round(v, 2) for k, v in single.items()}}))
    for result in results:
        result.report()
    return results


async def load_once(port: int, requests: list[bytes], clients: int) -> None:
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(clients)]
    chunks = [requests[i::clients] for i in range(clients)]

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mine: list[bytes]) -> None:
        for request in mine:
            await exchange(reader, writer, request)

    await asyncio.gather(*(worker(r, w, c) for (r, w), c in zip(connections, chunks, strict=True)))
    for _, writer in connections:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main())
