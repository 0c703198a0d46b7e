"""The Transfer Agent: take a client's signed request and have an executor serve it
(reference/inference.md §7.1-§7.2; DESIGN.md §8 points 1-2).

Checks in the reference's order and with its answers: the body (400 naming the problem; the reference
answers 500), the requester's account (401), the developer signature (401), the escrow against the
balance (402 `Insufficient balance`), the timestamp window (400), a replayed Authorization (400), the
bandwidth limit (429). Then:

* the executor is drawn locally from the effective epoch (`ExecutorDirectory`), never by a chain query;
* the original body goes to it with the TA signature and the headers of http.md §1.13, or to the
  local executor when it is this participant;
* an executor that refuses (5xx, 429), fails or times out before its answer starts is avoided for a few
  blocks (unless no other can serve) and another is drawn, up to `attempts` in all; then 503 with
  `Retry-After`;
* MsgStartInference goes to the sink once an executor's answer has started, naming that executor, so
  Start, Finish and both signatures agree. The answer is passed through unchanged.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from dapi.chain.errors import ChainError, ChainNotFound
from dapi.chain.keys import SigningKey
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.inference.bandwidth import BandwidthLimiter, request_kb
from dapi.inference.chain_facts import ChainFacts
from dapi.inference.checks import Rejected, ReplayGuard, RequestHeaders, Role, check_timestamp, replay_window_blocks
from dapi.inference.directory import Candidate, ExecutorDirectory, NoExecutor, ParticipantsUnavailable
from dapi.inference.executor import HttpClient, InferenceExecutor, MessageSink, Reply
from dapi.inference.request_body import DEFAULT_MAX_TOKENS, RequestBodyError, modify_request_body, prompt_hash
from dapi.inference.request_body import prompt_payload as canonical_payload
from dapi.inference.signatures import sign, ta_signed_bytes, verify_dev_signature
from dapi.inference.stats import InferenceStats
from dapi.logs import get_logger

__all__ = ["DEFAULT_PRICE", "ChatRequest", "TransferAgent", "parse_chat_request"]

log = get_logger(__name__)

DEFAULT_PRICE = 1000  # the chain's PerTokenCost when a model has no price
INT32_MAX = 2**31 - 1
RETRY_AFTER_SECONDS = 2


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The fields of an OpenAI chat request the TA reads (the reference's `OpenAiRequest`)."""

    model: str
    max_tokens: int
    max_completion_tokens: int
    prompt_bytes: int  # the reference's prompt token estimate: bytes of the contents plus a newline

    @property
    def escrow_tokens(self) -> int:
        return self.max_tokens or DEFAULT_MAX_TOKENS

    @property
    def start_max_tokens(self) -> int:
        return self.max_completion_tokens if self.max_completion_tokens > 0 else self.escrow_tokens


def _int32(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not -INT32_MAX - 1 <= value <= INT32_MAX:
        raise Rejected(400, f"{key} must be a 32-bit integer")
    return value


def parse_chat_request(raw: bytes) -> ChatRequest:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise Rejected(400, f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Rejected(400, "request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Rejected(400, "model is required")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise Rejected(400, "messages must be a list")
    contents = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if content is not None and not isinstance(content, str):
            raise Rejected(400, f"messages[{i}].content must be a string")
        contents.append(content or "")
    _int32(body, "seed")
    prompt_bytes = len(("".join(contents) + "\n").encode("utf-8"))
    return ChatRequest(model, _int32(body, "max_tokens"), _int32(body, "max_completion_tokens"), prompt_bytes)


@dataclass(frozen=True, slots=True)
class _Accepted:
    headers: RequestHeaders
    request: ChatRequest
    raw: bytes
    escrow: int
    ticket: int
    seed: int
    payload: str  # the canonical modified body: MsgStartInference's prompt_payload


class TransferAgent:
    """Accepts client requests, picks executors, forwards, sends MsgStartInference.

    Args:
        address: this participant's account (the default transfer address, the Start's creator).
        signer: the key that signs the TA signature and whose account sends Start (account key or grantee).
        chain, directory: chain facts cached per block, and the executor draw.
        local: this participant's own executor, used when it is drawn.
        sink: where MsgStartInference goes (the outbox).
        http: client for forwarding; `timeout` bounds connecting and waiting for the executor's answer.
        public_url: advertised in the 429 message.
    """

    def __init__(self, *, address: str, signer: SigningKey, chain: ChainFacts, directory: ExecutorDirectory,
                 local: InferenceExecutor | None, sink: MessageSink, http: HttpClient, public_url: str,
                 replay: ReplayGuard | None = None, stats: InferenceStats | None = None,
                 bandwidth: BandwidthLimiter | None = None, rng: random.Random | None = None, attempts: int = 3,
                 avoid_blocks: int = 3, timeout: httpx.Timeout | None = None,
                 clock: Any = time.monotonic) -> None:
        self.address = address
        self.signer = signer
        self.chain = chain
        self.directory = directory
        self.local = local
        self.sink = sink
        self.http = http
        self.public_url = public_url.rstrip("/")
        self.replay = replay or ReplayGuard()
        self.stats = stats or InferenceStats()
        self.bandwidth = bandwidth or BandwidthLimiter()
        self.rng = rng or random.Random()
        self.attempts = attempts
        self.avoid_blocks = avoid_blocks
        self.timeout = timeout or httpx.Timeout(300.0, connect=5.0)
        self._clock = clock
        self._avoid: dict[str, int] = {}  # executor -> the last height it is skipped at

    async def serve(self, headers: Mapping[str, str], raw: bytes) -> Reply:
        started = self._clock()
        try:
            accepted = await self._accept(headers, raw)
        except Rejected as rejected:
            self.stats.record(Role.TRANSFER_AGENT, "", rejected.reason, self._clock() - started)
            return Reply.error(rejected)
        try:
            reply = await self._forward(accepted, started)
        except BaseException:
            self._end(accepted)
            raise
        return reply

    def _end(self, accepted: _Accepted) -> None:
        self.bandwidth.release(accepted.ticket)

    # -- checks --

    async def _accept(self, headers: Mapping[str, str], raw: bytes) -> _Accepted:
        request = parse_chat_request(raw)
        seed = self.rng.randrange(INT32_MAX + 1)
        try:  # what the executor will do to the body, done here first: a body it would refuse is a 400 now
            payload = canonical_payload(modify_request_body(raw, seed))
        except RequestBodyError as exc:
            raise Rejected(400, f"Bad Request: {exc}") from None
        h = RequestHeaders.parse(headers, self.address)
        try:
            requester = await self.chain.requester(h.requester)
            price = await self.chain.price(request.model, DEFAULT_PRICE)
        except ChainNotFound:
            raise Rejected(401, f"Unable to validate request against PubKey:account {h.requester} not found") \
                from None
        except ChainError as exc:
            raise Rejected(503, f"chain unavailable: {exc}", retry_after=RETRY_AFTER_SECONDS) from None
        if not requester.public_key or verify_dev_signature(
                requester.public_key, raw, h.timestamp, h.transfer_address, h.authorization) is None:
            raise Rejected(401, "Unable to validate request against PubKey:invalid signature")
        escrow = (request.prompt_bytes + request.escrow_tokens) * price
        if requester.balance < escrow:
            raise Rejected(402, "Insufficient balance")
        expiration, advance = self.chain.timestamp_window()
        try:
            block_time = await self.chain.block_time_ns()
        except ChainError as exc:
            raise Rejected(503, f"chain unavailable: {exc}", retry_after=RETRY_AFTER_SECONDS) from None
        check_timestamp(h.timestamp, block_time, expiration, advance)
        self.replay.record(h.authorization, Role.TRANSFER_AGENT, self.chain.height, replay_window_blocks(expiration))
        if await self.directory.knows(request.model) is False:
            raise Rejected(400, f"unknown model {request.model!r}: no participant serves it in the current epoch")
        ticket = await self._bandwidth(request)
        self.chain.reserve(h.requester, escrow)
        return _Accepted(h, request, raw, escrow, ticket, seed, payload)

    async def _bandwidth(self, request: ChatRequest) -> int:
        try:
            participants = len((await self.directory.effective()).stored.value.participants)
        except (ChainError, NoExecutor):
            participants = 1  # the chain divides by its parent group's size; unknown here, so no division
        params = self.chain.bandwidth
        ticket = self.bandwidth.acquire(
            height=self.chain.height, lifespan=self.chain.expiration_blocks,
            limit_per_block_kb=BandwidthLimiter.limit_per_block(params, participants),
            kb=request_kb(params, request.prompt_bytes, request.escrow_tokens))
        if ticket is None:
            raise Rejected(429, "Transfer Agent capacity reached. Try another TA from "
                                f"{self.public_url}/v1/epochs/current/participants")
        return ticket

    # -- forwarding --

    def avoid(self, address: str, blocks: int | None = None) -> None:
        """Draw no executor `address` for the next `blocks` blocks (by default the back-off after a
        failure; counted in blocks, so it means the same on a devnet as on a chain); 0 lifts it."""
        blocks = self.avoid_blocks if blocks is None else blocks
        if blocks <= 0:
            self._avoid.pop(address, None)
        else:
            self._avoid[address] = self.chain.height + blocks

    def _avoided(self) -> set[str]:
        height = self.chain.height
        for address in [a for a, until in self._avoid.items() if until < height]:
            del self._avoid[address]
        return set(self._avoid)

    async def _draw(self, model: str, tried: list[str]) -> Candidate:
        """An executor not tried yet, preferably not one that failed lately: when every candidate did, one of
        those is better than no answer. When the epoch's participants cannot be read, the chain draws."""
        try:
            return await self.directory.draw(model, set(tried) | self._avoided())
        except ParticipantsUnavailable as exc:
            return await self._chain_draw(model, tried, exc)
        except NoExecutor:
            if not self._avoid:
                raise
        return await self.directory.draw(model, set(tried))

    async def _chain_draw(self, model: str, tried: list[str], why: ParticipantsUnavailable) -> Candidate:
        try:
            address, url = await self.chain.random_executor(model)
        except ChainError as exc:
            raise NoExecutor(f"{why}; GetRandomExecutor failed too: {exc}") from None
        if address in tried:
            raise NoExecutor(f"{why}; GetRandomExecutor drew {address} again")
        return Candidate(address, 1, url)

    async def _forward(self, accepted: _Accepted, started: float) -> Reply:
        seed, payload = accepted.seed, accepted.payload
        tried: list[str] = []
        reasons: list[str] = []
        for _ in range(self.attempts):
            try:
                executor = await self._draw(accepted.request.model, tried)
            except NoExecutor as exc:
                reasons.append(str(exc))
                break
            tried.append(executor.address)
            reply, failure = await self._try(executor, accepted, seed)
            if reply is not None:
                await self._start(executor, accepted, seed, payload)
                return self._finishing(reply, accepted, started, executor.address)
            self.stats.note_retry()
            reasons.append(f"{executor.address}: {failure}")
            self.avoid(executor.address)
            log.warning("executor failed before answering; trying another", executor=executor.address,
                        inference_id=accepted.headers.authorization[:16], reason=failure)
        self._give_back(accepted)
        message = "no executor could serve the request: " + "; ".join(reasons)
        self.stats.record(Role.TRANSFER_AGENT, accepted.request.model, "no executor", self._clock() - started,
                          inference_id=accepted.headers.authorization)
        return Reply.error(Rejected(503, message, retry_after=RETRY_AFTER_SECONDS))

    def _give_back(self, accepted: _Accepted) -> None:
        self.chain.unreserve(accepted.headers.requester, accepted.escrow)
        self._end(accepted)

    def _forward_headers(self, accepted: _Accepted, executor: Candidate, seed: int) -> dict[str, str]:
        h = accepted.headers
        signed = ta_signed_bytes(accepted.raw, h.timestamp, h.transfer_address, executor.address)
        return {
            "authorization": h.authorization, "x-inference-id": h.authorization, "x-seed": str(seed),
            "x-timestamp": str(h.timestamp), "x-transfer-address": h.transfer_address,
            "x-requester-address": h.requester, "x-ta-signature": sign(self.signer, signed),
            "content-type": "application/json",
        }

    async def _try(self, executor: Candidate, accepted: _Accepted, seed: int) -> tuple[Reply | None, str]:
        """The executor's answer once it has started, or why it did not."""
        headers = self._forward_headers(accepted, executor, seed)
        if executor.address == self.address and self.local is not None:
            reply = await self.local.serve(headers, accepted.raw)
            if reply.status >= 500 or reply.status == 429:
                return None, f"{reply.status} {reply.body[:200].decode('utf-8', errors='replace')}"
            return reply, ""
        if not executor.inference_url:
            return None, "no inference_url on chain"
        request = self.http.build_request("POST", executor.inference_url.rstrip("/") + "/v1/chat/completions",
                                          content=accepted.raw, headers=headers, timeout=self.timeout)
        try:
            answer = await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__} {exc}".strip()
        if answer.status_code >= 500 or answer.status_code == 429:
            try:
                text = (await answer.aread())[:200].decode("utf-8", errors="replace")
            except httpx.HTTPError:
                text = ""
            finally:
                await answer.aclose()
            return None, f"{answer.status_code} {text}"
        passed = {k: v for k, v in answer.headers.items() if k.lower() in ("content-type", "cache-control")}
        return Reply(answer.status_code, passed, stream=_relay(answer)), ""

    async def _start(self, executor: Candidate, accepted: _Accepted, seed: int, payload: str) -> None:
        h, request = accepted.headers, accepted.request
        signed = ta_signed_bytes(accepted.raw, h.timestamp, h.transfer_address, executor.address)
        message = itx.MsgStartInference(
            creator=self.address, inference_id=h.authorization, prompt_hash=prompt_hash(payload),
            prompt_payload=payload, model=request.model, requested_by=h.requester, assigned_to=executor.address,
            node_version="", max_tokens=request.start_max_tokens, prompt_token_count=request.prompt_bytes,
            request_timestamp=h.timestamp, original_prompt=accepted.raw.decode("utf-8", errors="replace"),
            transfer_signature=sign(self.signer, signed),
        )
        try:
            await self.sink.submit(message)
        except Exception as exc:  # the answer is already on its way; the executor's Finish still lands
            log.error("MsgStartInference not taken", inference_id=h.authorization[:16], error=str(exc))

    def _finishing(self, reply: Reply, accepted: _Accepted, started: float, executor: str) -> Reply:
        """The reply with the TA's bookkeeping attached to its end."""
        model = accepted.request.model
        ok = 200 <= reply.status < 300
        first_byte = self._clock() - started  # the executor's answer has started

        async def done(completed: bool) -> None:
            self._end(accepted)
            outcome = "ok" if ok and completed else (f"executor {reply.status}" if not ok else "answer broke off")
            self.stats.record(Role.TRANSFER_AGENT, model, outcome, self._clock() - started,
                              inference_id=accepted.headers.authorization, executor=executor, first_byte=first_byte)

        if reply.stream is None:
            inner_after = reply.after

            async def after() -> None:
                await done(True)
                if inner_after is not None:
                    await inner_after()
            return Reply(reply.status, reply.headers, body=reply.body, after=after)
        return Reply(reply.status, reply.headers, stream=_watched(reply.stream, done), after=reply.after)


async def _relay(answer: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in answer.aiter_bytes():
            yield chunk
    finally:
        await answer.aclose()


async def _watched(stream: AsyncIterator[bytes], done: Any) -> AsyncIterator[bytes]:
    completed = False
    try:
        async for chunk in stream:
            yield chunk
        completed = True
    finally:
        await done(completed)
