"""A simulated ML node's finite capacity: request slots, the waiting room, the token rate.

Assertions are on counts and ordering. The only time-based ones are bounds physics gives in the safe
direction (a node never makes more than rate * elapsed tokens), which a slow machine cannot break.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from dapi.devnet.mlnode import CapacityExceeded, NodeCapacity, SimMLNodeServer, SimNode, tokens_per_second_of

MODEL = "m"


@pytest.fixture
def sim_options() -> dict[str, Any]:
    return {"batch_interval": 0.05, "nodes": ()}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def serving_node(
    sim: SimMLNodeServer, http: httpx.AsyncClient, name: str, **capacity: Any
) -> tuple[SimNode, str]:
    node = sim.add_node(name)
    node.capacity.configure(**capacity)
    resp = await http.post(sim.node_url(name) + "/api/v1/inference/up", json={"model": MODEL, "dtype": "fp8"})
    assert resp.json() == {"status": "OK"}
    return node, sim.node_url(name) + "/v1/chat/completions"


def body(tokens: int, *, seed: int = 1, stream: bool = False) -> dict[str, Any]:
    """A request for exactly `tokens` completion tokens."""
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"request {seed}"}],
        "seed": seed,
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def stream_lines(http: httpx.AsyncClient, url: str, payload: dict[str, Any], on_line: Callable[[str], None]) -> int:
    async with http.stream("POST", url, json=payload) as resp:
        async for line in resp.aiter_lines():
            if line:
                on_line(line)
        return resp.status_code


def tokens_of(usage_line: str) -> int:
    usage = json.loads(usage_line.removeprefix("data: "))["usage"]
    return int(usage["total_tokens"])


# --- slots and the waiting room ------------------------------------------------------------------


async def test_a_request_beyond_max_concurrent_waits_for_a_slot(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    node, url = await serving_node(sim, http, "c1", max_concurrent=2, tokens_per_second=200, queue_timeout=60)
    finished: list[str] = []

    async def run(name: str, payload: dict[str, Any]) -> int:
        resp = await http.post(url, json=payload)
        finished.append(name)
        return resp.status_code

    holders = [asyncio.create_task(run(f"holder{i}", body(40, seed=i, stream=True))) for i in (1, 2)]
    await wait_until(lambda: node.capacity.in_flight == 2)
    extra = asyncio.create_task(run("extra", body(5, seed=3)))
    await wait_until(lambda: node.capacity.waiting == 1)
    assert not extra.done() and node.capacity.admitted == 2

    assert await asyncio.gather(*holders, extra) == [200, 200, 200]
    assert finished.index("extra") > min(finished.index("holder1"), finished.index("holder2"))
    snapshot = node.capacity.snapshot()
    assert (snapshot["peak_in_flight"], snapshot["admitted"], snapshot["rejected"]) == (2, 3, 0)
    assert (snapshot["in_flight"], snapshot["waiting"]) == (0, 0)


@pytest.mark.parametrize("waiting_room", [{"queue_timeout": 0.05}, {"queue_timeout": 60, "max_queue": 0}])
async def test_a_request_beyond_max_concurrent_fails_when_no_slot_comes(
    sim: SimMLNodeServer, http: httpx.AsyncClient, waiting_room: dict[str, Any]
) -> None:
    node, url = await serving_node(sim, http, "c1", max_concurrent=1, tokens_per_second=100, **waiting_room)
    holder = asyncio.create_task(http.post(url, json=body(60, stream=True)))
    await wait_until(lambda: node.capacity.in_flight == 1)

    refused = await http.post(url, json=body(5, seed=2))
    assert refused.status_code == 503
    error = refused.json()
    assert (error["object"], error["type"], error["code"]) == ("error", "ServiceUnavailableError", 503)
    assert "capacity" in error["message"]
    assert not holder.done()  # the refusal came while the slot was still held
    assert (await holder).status_code == 200
    assert (node.capacity.rejected, node.capacity.admitted) == (1, 1)


async def test_a_client_that_goes_away_frees_its_slot(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    node, url = await serving_node(sim, http, "c1", max_concurrent=1, tokens_per_second=50)
    async with http.stream("POST", url, json=body(100, stream=True)) as resp:
        async for line in resp.aiter_lines():
            if '"content":"' in line and '"role"' not in line:
                break  # the first token arrived; hang up
    await wait_until(lambda: node.capacity.in_flight == 0)
    assert (await http.post(url, json=body(2))).status_code == 200


async def test_the_model_going_away_cuts_streams_and_fails_plain_requests(
    sim: SimMLNodeServer, http: httpx.AsyncClient
) -> None:
    node, url = await serving_node(sim, http, "c1", tokens_per_second=50)
    lines: list[str] = []
    streaming = asyncio.create_task(stream_lines(http, url, body(200, stream=True), lines.append))
    plain = asyncio.create_task(http.post(url, json=body(200, seed=2)))
    await wait_until(lambda: len(lines) >= 2 and node.capacity.in_flight == 2)
    await http.post(sim.node_url("c1") + "/api/v1/inference/down")

    with pytest.raises(httpx.RemoteProtocolError):
        await streaming  # cut off mid-stream, as by a vLLM that exits
    assert "data: [DONE]" not in lines
    assert (await plain).status_code == 502
    assert node.capacity.in_flight == 0


# --- the token rate ------------------------------------------------------------------------------


async def test_the_token_rate_bounds_throughput_and_is_shared(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    rate = 200.0
    node, url = await serving_node(sim, http, "c1", tokens_per_second=rate, max_concurrent=8)
    arrivals: list[tuple[int, str]] = []  # (stream, line), in arrival order
    overruns: list[tuple[int, float]] = []
    started = time.monotonic()

    def on_line(stream: int) -> Callable[[str], None]:
        def record(line: str) -> None:
            arrivals.append((stream, line))
            budget = rate * (time.monotonic() - started) + 1e-6
            if node.capacity.tokens_done > budget:
                overruns.append((node.capacity.tokens_done, budget))

        return record

    statuses = await asyncio.gather(*(stream_lines(http, url, body(30, seed=i, stream=True), on_line(i)) for i in (1, 2, 3)))
    assert statuses == [200, 200, 200]
    assert overruns == []  # never more than rate * elapsed tokens made

    # Every prompt and completion token went through the clock, once.
    usage = [line for _, line in arrivals if '"usage"' in line]
    assert node.capacity.tokens_done == sum(tokens_of(line) for line in usage)

    # The rate is shared: each stream's first token comes before any stream's last.
    tokens = [(s, line) for s, line in arrivals if '"delta":{"content":' in line]
    first = {s: next(i for i, (t, _) in enumerate(tokens) if t == s) for s in (1, 2, 3)}
    last = {s: max(i for i, (t, _) in enumerate(tokens) if t == s) for s in (1, 2, 3)}
    assert max(first.values()) < min(last.values())


async def test_a_stream_sends_tokens_as_they_are_made(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    node, url = await serving_node(sim, http, "c1", tokens_per_second=100)
    done_at_first_token: list[int] = []

    def on_line(line: str) -> None:
        if '"delta":{"content":' in line and not done_at_first_token:
            done_at_first_token.append(node.capacity.tokens_done)

    assert await stream_lines(http, url, body(100, stream=True), on_line) == 200
    # The first token reached the client while most of the answer was still to be made.
    assert done_at_first_token[0] < node.capacity.tokens_done - 50


def test_throughput_in_tokens_per_block_becomes_a_rate() -> None:
    assert tokens_per_second_of(500, 5.0) == 100.0
    with pytest.raises(ValueError):
        tokens_per_second_of(0, 5.0)
    capacity = NodeCapacity(max_concurrent=1, tokens_per_second=1.0, queue_timeout=0)
    capacity.configure(tokens_per_second=tokens_per_second_of(1000, 0.5))
    assert capacity.tokens_per_second == 2000.0 and capacity.tokens_per_turn == 40
    with pytest.raises(ValueError):
        capacity.configure(tokens_per_second=float("inf"))


async def test_set_throughput_and_the_sim_api_change_a_nodes_capacity(
    sim: SimMLNodeServer, http: httpx.AsyncClient
) -> None:
    node = sim.add_node("c1", max_concurrent=3, tokens_per_second=30)
    assert (node.capacity.max_concurrent, node.capacity.tokens_per_second) == (3, 30)
    node.set_throughput(tokens_per_block=1200, block_time=2.0)
    assert node.capacity.tokens_per_second == 600.0

    added = await http.post(sim.url + "/sim/nodes", json={"name": "c2", "max_concurrent": 4, "tokens_per_second": 70})
    assert added.status_code == 201 and added.json()["capacity"]["max_concurrent"] == 4
    patched = await http.patch(sim.url + "/sim/nodes/c2", json={"tokens_per_second": 90, "queue_timeout": 0})
    assert patched.json()["capacity"]["tokens_per_second"] == 90
    assert (await http.patch(sim.url + "/sim/nodes/c2", json={"max_concurrent": 0})).status_code == 422


async def test_waiters_get_slots_first_come_first_served() -> None:
    capacity = NodeCapacity(max_concurrent=1, tokens_per_second=1000, queue_timeout=60, max_queue=3)
    held = await capacity.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        slot = await capacity.acquire()
        order.append(i)
        slot.release()

    waiters = []
    for i in range(3):
        waiters.append(asyncio.create_task(wait(i)))
        await wait_until(lambda n=i + 1: capacity.waiting == n)
    with pytest.raises(CapacityExceeded):
        await capacity.acquire()  # the waiting room is full
    held.release()
    held.release()  # a second release does nothing
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2] and capacity.in_flight == 0
