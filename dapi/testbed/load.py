"""Seeded inference load for `dapi devnet --load RPS` (DESIGN.md §8): clients asking the own daemon as TA.

Arrivals are Poisson at `rps`; each request draws, from one seeded generator, its client account, model,
prompt length, `max_tokens`, streaming or not, and the client signature scheme (gonka-openai ≤ 0.2.3
signs the raw body, ≥ 0.2.4 its sha256 hex). At most `max_in_flight` requests are open; an arrival
beyond that is counted as failed ("client in-flight limit"), as a saturated client would see it.

A request counts **ok** when the client received the whole answer (status 200, content, a stream ended
by `[DONE]`) and its MsgFinishInference landed on chain; until the Finish is seen it is *pending*, and
one still unseen `settle_blocks` after the answer is counted failed. Tallies are kept per phase of the
latest epoch at the moment the request was sent (the phase names of `/v1/epochs/latest`); `take_window()`
hands over what was settled since the last call, for the per-epoch reports, and `totals()` everything.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from dapi.chain.epochs import Phase
from dapi.devnet.genesis import ClientSpec
from dapi.inference.signatures import ClientScheme, dev_signed_bytes, sign
from dapi.inference.stats import percentile
from dapi.logs import get_logger
from dapi.runtime.tasks import TaskOwner

__all__ = ["InferenceLoad", "LoadResult"]

log = get_logger(__name__)

WORDS = ("the", "network", "keeps", "serving", "while", "nodes", "mine", "proof", "of", "compute", "and",
         "every", "request", "finds", "a", "free", "slot", "on", "some", "gpu", "today")
MAX_TOKENS = (16, 32, 64, 128)
PROMPT_WORDS = (4, 16, 48, 120)
PHASES = tuple(str(p) for p in Phase)


@dataclass
class LoadResult:
    """One request: when and in which phase it was sent, how it ended."""

    inference_id: str
    phase: str
    sent_at: float
    latency: float = 0.0
    received: bool = False
    reason: str = ""
    answered_height: int = 0
    settled: bool = False
    ok: bool = False


@dataclass
class _Tally:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, result: LoadResult) -> None:
        self.sent += 1
        if result.ok:
            self.ok += 1
            self.latencies.append(result.latency)
        else:
            self.failed += 1
            self.reasons[result.reason] = self.reasons.get(result.reason, 0) + 1

    def as_json(self) -> dict[str, Any]:
        p50, p99 = percentile(self.latencies, 0.5), percentile(self.latencies, 0.99)
        return {"sent": self.sent, "ok": self.ok, "failed": self.failed,
                "p50_ms": None if p50 is None else round(p50 * 1000, 1),
                "p99_ms": None if p99 is None else round(p99 * 1000, 1),
                **({"failures": dict(sorted(self.reasons.items()))} if self.reasons else {})}


def _report(results: Sequence[LoadResult]) -> dict[str, Any]:
    tallies = {phase: _Tally() for phase in PHASES}
    for result in results:
        tallies[result.phase].add(result)
    return {phase: t.as_json() for phase, t in tallies.items()}


class InferenceLoad:
    """Seeded chat-completion traffic against a Transfer Agent.

    Args:
        url: the TA's `/v1` base URL; `transfer_address` its account (the clients sign for it).
        clients: funded client accounts to sign as.
        models: the models to ask for.
        rps: mean arrivals per second; `seed` fixes every random choice.
        where: the (height, phase) of the chain now.
        finished: whether an inference's MsgFinishInference has landed.
        ready: awaited before the first request, until the network can serve (None: at once).
    """

    def __init__(self, *, url: str, transfer_address: str, clients: Sequence[ClientSpec], models: Sequence[str],
                 rps: float, seed: int, where: Callable[[], tuple[int, str]], finished: Callable[[str], bool],
                 max_in_flight: int = 64, settle_blocks: int = 30, timeout: float = 60.0,
                 ready: Callable[[], Awaitable[None]] | None = None) -> None:
        if rps <= 0 or not clients or not models:
            raise ValueError("load needs a positive rate, clients and models")
        self.url = url.rstrip("/")
        self.transfer_address = transfer_address
        self.clients = list(clients)
        self.models = list(models)
        self.rps = rps
        self.rng = random.Random(seed)
        self.where = where
        self.finished = finished
        self.max_in_flight = max_in_flight
        self.settle_blocks = settle_blocks
        self.timeout = timeout
        self.ready = ready
        self.results: list[LoadResult] = []
        self._open: list[LoadResult] = []  # sent, not yet settled
        self._window: list[LoadResult] = []  # settled, not yet reported
        self._in_flight = 0
        self._tasks = TaskOwner("devnet-load")
        self._http: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout, connect=5.0),
                                       limits=httpx.Limits(max_connections=self.max_in_flight))
        self._tasks.spawn(self._arrivals(), "devnet-load-arrivals")

    async def stop(self) -> None:
        await self._tasks.stop()
        if self._http is not None:
            await self._http.aclose()

    # -- sending --

    async def _arrivals(self) -> None:
        if self.ready is not None:
            await self.ready()
        while True:
            await asyncio.sleep(self.rng.expovariate(self.rps))
            body, client, scheme, stream = self._draw()
            phase = self.where()[1]
            if self._in_flight >= self.max_in_flight:
                result = LoadResult("", phase, time.monotonic(), reason="client in-flight limit", settled=True)
                self.results.append(result)
                self._window.append(result)
                continue
            self._in_flight += 1
            self._tasks.spawn(self._send(body, client, scheme, stream, phase), "devnet-load-request")

    def _draw(self) -> tuple[bytes, ClientSpec, ClientScheme, bool]:
        rng = self.rng
        client = rng.choice(self.clients)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.choice(PROMPT_WORDS)))
        stream = rng.random() < 0.5
        body: dict[str, Any] = {"model": rng.choice(self.models), "messages": [{"role": "user", "content": words}],
                                "max_tokens": rng.choice(MAX_TOKENS)}
        if stream:
            body["stream"] = True
        scheme = ClientScheme.RAW if rng.random() < 0.5 else ClientScheme.SHA256_HEX
        return json.dumps(body).encode(), client, scheme, stream

    async def _send(self, body: bytes, client: ClientSpec, scheme: ClientScheme, stream: bool, phase: str) -> None:
        assert self._http is not None
        timestamp = time.time_ns()
        # No X-Transfer-Address, as gonka-openai: the TA signs for its own account, which is the endpoint's.
        transfer = self.transfer_address
        auth = sign(client.key, dev_signed_bytes(body, timestamp, transfer, scheme))
        result = LoadResult(auth, phase, time.monotonic())
        self.results.append(result)
        self._open.append(result)
        headers = {"Authorization": auth, "X-Requester-Address": client.address, "X-Timestamp": str(timestamp),
                   "Content-Type": "application/json"}
        try:
            async with self._http.stream("POST", self.url + "/chat/completions", content=body,
                                         headers=headers) as answer:
                text = (await answer.aread()).decode("utf-8", errors="replace")
                if answer.status_code != 200:
                    result.reason = _reason(answer.status_code, text)
                elif not _complete(text, stream):
                    result.reason = "answer incomplete"
                else:
                    result.received = True
        except httpx.HTTPError as exc:
            result.reason = f"client error {type(exc).__name__}"
        finally:
            self._in_flight -= 1
            result.latency = time.monotonic() - result.sent_at
            result.answered_height = self.where()[0]

    # -- settling and reports --

    def settle(self) -> None:
        """Decide what can be decided: failures at once, successes once their Finish landed."""
        height = self.where()[0]
        still_open = []
        for result in self._open:
            if result.answered_height == 0:
                still_open.append(result)  # in flight
                continue
            if not result.received:
                result.settled = True
            elif self.finished(result.inference_id):
                result.settled = result.ok = True
            elif height - result.answered_height > self.settle_blocks:
                result.settled, result.reason = True, "finish did not land"
            if result.settled:
                self._window.append(result)
            else:
                still_open.append(result)
        self._open = still_open

    def take_window(self) -> dict[str, Any]:
        """Per phase `{sent, ok, failed, p50_ms, p99_ms}` of what was settled since the last call."""
        self.settle()
        window, self._window = self._window, []
        return _report(window)

    def totals(self) -> dict[str, Any]:
        self.settle()
        return _report([r for r in self.results if r.settled])

    def live(self) -> dict[str, Any]:
        """For the live view: requests sent, settled ok/failed, open, and the rate asked for."""
        self.settle()
        settled = [r for r in self.results if r.settled]
        return {"sent": len(self.results), "ok": sum(r.ok for r in settled),
                "failed": sum(not r.ok for r in settled), "open": len(self._open), "rps": self.rps,
                "by_phase": _report(settled)}


def _complete(text: str, stream: bool) -> bool:
    if stream:
        return "data: [DONE]" in text and '"content"' in text
    try:
        answer = json.loads(text)
    except ValueError:
        return False
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    return bool((choices[0].get("message") or {}).get("content"))


def _reason(status: int, text: str) -> str:
    try:
        message = str(json.loads(text).get("error", ""))
    except (ValueError, AttributeError):
        message = text[:60]
    return f"{status} {message[:100]}".strip()
