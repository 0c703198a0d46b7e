"""The Executor: serve a request the Transfer Agent forwarded (reference/inference.md §5, §7.3; DESIGN.md §8).

1. Check both signatures (the developer's against the requester's account key; the TA's against the
   transfer address's key and its MsgStartInference grantees, with this node as executor), the
   timestamp window and the replay guard (executor role).
2. Modify the body (§5.1) with `X-Seed`, lease an own ML node serving the model, and POST it there.
3. Proxy the answer with `"id"` replaced by the inference id: a JSON answer as one body, a stream line
   by line as each line arrives. The lease is held until the answer has been fully proxied, so
   `max_concurrent` bounds streams too (the reference released it at the response headers).
4. MsgFinishInference (§5.5) with the executor signature goes to the message sink (the durable outbox
   in the daemon) before the client has the whole answer: a JSON answer is sent once it is queued, a
   stream's `data: [DONE]` is held back until then. So an answered inference is always paid, even if
   the process dies right after. None for an empty answer, as the reference.

Refusals: 401 signatures, 400 timestamp/replay/body, 503 `no nodes available for inference` (so a TA
tries elsewhere), 502 when the ML node fails or answers an error; every call to the node has timeouts.

The chain facts, the node pool and the sink are protocols, so the devnet's simulated peers run this
same code over their ledger and simulated nodes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from google.protobuf.message import Message
from httpx._decoders import LineDecoder  # what aiter_lines splits with; httpx is pinned below 1

from dapi.chain.keys import SigningKey
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.inference.checks import Rejected, ReplayGuard, RequestHeaders, Role, check_timestamp, replay_window_blocks
from dapi.inference.request_body import RequestBodyError, go_marshal, modify_request_body
from dapi.inference.responses import DONE_LINE, FinishValues, StreamRewriter, rewrite_json
from dapi.inference.signatures import sign, ta_signed_bytes, verify_dev_signature, verify_ta_signature
from dapi.inference.stats import InferenceStats
from dapi.logs import get_logger
from dapi.runtime.http_pool import ShardedClient

__all__ = ["NO_NODES", "ExecutorChain", "HttpClient", "InferenceExecutor", "InferenceNodes", "MessageSink", "NodeLease",
           "Reply"]

log = get_logger(__name__)

NO_NODES = "no nodes available for inference"
ERROR_TEXT_LIMIT = 300  # characters of an ML node's error body passed on
LINES_PER_SEND = 16  # stream lines rewritten and sent together at most (see `_stream`)


class ExecutorChain(Protocol):
    """What the executor reads of the chain (cached per block by the implementation)."""

    @property
    def height(self) -> int: ...

    async def account_key(self, address: str) -> bytes | None: ...

    async def transfer_keys(self, address: str) -> list[bytes]: ...

    async def block_time_ns(self) -> int: ...

    def timestamp_window(self) -> tuple[int, int]: ...


class NodeLease(Protocol):
    """One inference slot on an ML node; `url` is its inference base URL."""

    @property
    def url(self) -> str: ...

    def release(self, ok: bool) -> None: ...


class InferenceNodes(Protocol):
    """Own ML nodes: a lease on one serving `model` now, or None when none is free."""

    def lease(self, model: str) -> NodeLease | None: ...


# What the inference path forwards with: a plain httpx client, or the daemon's sharded one.
HttpClient = httpx.AsyncClient | ShardedClient


class MessageSink(Protocol):
    """Where chain messages go to be signed and sent (the durable outbox in the daemon)."""

    async def submit(self, msg: Message) -> object: ...


@dataclass
class Reply:
    """An answer to send: a body, or a stream of chunks; `after` runs once the body has been sent."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    after: Callable[[], Awaitable[None]] | None = None

    @classmethod
    def error(cls, rejected: Rejected) -> Reply:
        headers = {"content-type": "application/json"}
        if rejected.retry_after is not None:
            headers["retry-after"] = str(rejected.retry_after)
        return cls(rejected.status, headers, go_marshal({"error": rejected.message}))


@dataclass(frozen=True, slots=True)
class _Call:
    headers: RequestHeaders
    inference_id: str
    ta_signature: str
    raw: bytes
    body: dict[str, Any]
    model: str


_PASSED_HEADERS = ("content-type", "cache-control")


def _route_lines(rewriter: StreamRewriter, lines: list[str], held: list[str]) -> list[str]:
    """Rewrite `lines` in order; those from `data: [DONE]` on go to `held`, the others are returned."""
    ready = []
    for line in lines:
        out = rewriter.line(line) + "\n"
        if held or line == DONE_LINE:
            held.append(out)
        else:
            ready.append(out)
    return ready


class InferenceExecutor:
    """Serves forwarded requests on own ML nodes and sends MsgFinishInference.

    Args:
        address: this participant's account (executed_by, and the executor in the TA's signed bytes).
        signer: the key that signs the executor signature (the account key or a grantee).
        chain, nodes, sink: the chain facts, the ML node pool and where Finish messages go.
        http: the client for calls to ML nodes; `timeout` bounds connect, each read and the whole body.
        stats: where outcomes and latencies are counted.
    """

    def __init__(self, *, address: str, signer: SigningKey, chain: ExecutorChain, nodes: InferenceNodes,
                 sink: MessageSink, http: HttpClient, replay: ReplayGuard | None = None,
                 stats: InferenceStats | None = None, timeout: httpx.Timeout | None = None) -> None:
        self.address = address
        self.signer = signer
        self.chain = chain
        self.nodes = nodes
        self.sink = sink
        self.http = http
        self.replay = replay or ReplayGuard()
        self.stats = stats or InferenceStats()
        self.timeout = timeout or httpx.Timeout(300.0, connect=5.0)

    async def serve(self, headers: Mapping[str, str], raw: bytes) -> Reply:
        started = time.monotonic()
        try:
            call = await self._check(headers, raw)
        except Rejected as rejected:
            self.stats.record(Role.EXECUTOR, "", rejected.reason, time.monotonic() - started)
            return Reply.error(rejected)
        lease = self.nodes.lease(call.model)
        if lease is None:
            self.stats.record(Role.EXECUTOR, call.model, NO_NODES, time.monotonic() - started,
                              inference_id=call.inference_id, executor=self.address)
            return Reply.error(Rejected(503, NO_NODES, retry_after=1))
        try:
            return await self._run(call, lease, started)
        except BaseException:
            lease.release(False)
            raise

    async def _check(self, headers: Mapping[str, str], raw: bytes) -> _Call:
        request = RequestHeaders.parse(headers, self.address)
        inference_id, seed_text = headers.get("x-inference-id", ""), headers.get("x-seed", "")
        key = await self.chain.account_key(request.requester)
        if key is None:
            raise Rejected(401, "Unable to validate request against PubKey:the requester has no public key on chain")
        if verify_dev_signature(key, raw, request.timestamp, request.transfer_address, request.authorization) is None:
            raise Rejected(401, "Unable to validate request against PubKey:invalid signature")
        ta_signature = headers.get("x-ta-signature", "")
        keys = await self.chain.transfer_keys(request.transfer_address)
        if verify_ta_signature(keys, raw, request.timestamp, request.transfer_address, self.address,
                               ta_signature) is None:
            raise Rejected(401, "Unable to validate request against TransferSignature:invalid signature")
        expiration, advance = self.chain.timestamp_window()
        check_timestamp(request.timestamp, await self.chain.block_time_ns(), expiration, advance)
        self.replay.record(request.authorization, Role.EXECUTOR, self.chain.height, replay_window_blocks(expiration))
        try:
            seed = int(seed_text)
        except ValueError:
            raise Rejected(400, "Bad Request: X-Seed is not an integer") from None
        try:
            body = modify_request_body(raw, seed)
        except RequestBodyError as exc:
            raise Rejected(400, f"Bad Request: {exc}") from None
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise Rejected(400, "Bad Request: model is required")
        return _Call(request, inference_id or request.authorization, ta_signature, raw, body, model)

    async def _run(self, call: _Call, lease: NodeLease, started: float) -> Reply:
        upstream = self.http.build_request(
            "POST", lease.url + "/v1/chat/completions", content=go_marshal(call.body),
            headers={"content-type": "application/json"}, timeout=self.timeout)
        try:
            answer = await self.http.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            lease.release(False)
            self._failed(call, "ml node unreachable", started)
            return Reply.error(Rejected(502, f"Inference node request failed: {type(exc).__name__} {exc}"))
        if not answer.is_success:
            try:
                text = (await answer.aread()).decode("utf-8", errors="replace")[:ERROR_TEXT_LIMIT]
            except httpx.HTTPError:
                text = ""
            finally:
                await answer.aclose()
            lease.release(False)
            self._failed(call, f"ml node {answer.status_code}", started)
            return Reply.error(Rejected(
                502, f"Inference node response with an error. code = {answer.status_code}. error = {text}."))
        headers = {k: v for k, v in answer.headers.items() if k.lower() in _PASSED_HEADERS}
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            return Reply(answer.status_code, headers, stream=self._stream(call, lease, answer, started))
        try:
            body = await answer.aread()
        except httpx.HTTPError as exc:
            lease.release(False)
            self._failed(call, "ml node failed", started)
            return Reply.error(Rejected(502, f"Inference node answer broke off: {type(exc).__name__}"))
        finally:
            await answer.aclose()
        lease.release(True)
        try:
            payload, values = rewrite_json(body, call.inference_id)
        except RequestBodyError as exc:
            self._failed(call, "ml node answer unreadable", started)
            return Reply.error(Rejected(502, str(exc)))

        # Finish is durable before the client has the answer: an answered inference is never unpaid.
        await self._finish(call, values, started, first_byte=time.monotonic() - started)
        return Reply(answer.status_code, headers, body=payload)

    async def _stream(self, call: _Call, lease: NodeLease, answer: httpx.Response,
                      started: float) -> AsyncIterator[bytes]:
        rewriter = StreamRewriter(call.inference_id)
        # The lines of each chunk that arrived go out together, up to LINES_PER_SEND at a time: one send
        # per line (a vLLM stream has two lines per token) was a third of the executor's CPU under load,
        # while rewriting a whole large chunk before sending any of it delays the first token. The
        # splitting is `aiter_lines`' own, so the lines are exactly those it would give.
        lines = LineDecoder()
        held: list[str] = []  # `data: [DONE]` and what follows: sent once Finish is durable
        first_byte: float | None = None
        ok = False
        try:
            async for text in answer.aiter_text():
                ready = _route_lines(rewriter, lines.decode(text), held)
                for start in range(0, len(ready), LINES_PER_SEND):
                    if first_byte is None:
                        first_byte = time.monotonic() - started
                    yield "".join(ready[start:start + LINES_PER_SEND]).encode("utf-8")
            if rest := _route_lines(rewriter, lines.flush(), held):
                yield "".join(rest).encode("utf-8")
            ok = True
            prompt_tokens = None if rewriter.prompt_tokens else await self._tokenize(call, lease)
        except httpx.HTTPError as exc:
            log.warning("ML node stream broke off", inference_id=call.inference_id, error=str(exc))
            self._failed(call, "ml node failed", started)
            return
        finally:
            await answer.aclose()
            lease.release(ok)
        # The client sees the end of the stream only once Finish is durable (answered => lands).
        await self._finish(call, rewriter.finish_values(prompt_tokens), started, first_byte)
        if held:
            yield "".join(held).encode("utf-8")

    async def _tokenize(self, call: _Call, lease: NodeLease) -> int | None:
        """The prompt's token count from the node's `/tokenize`, when the stream reported none (§5.5)."""
        messages = call.body.get("messages")
        prompt = "".join(str(m.get("content") or "") for m in messages if isinstance(m, dict)) \
            if isinstance(messages, list) else ""
        try:
            answer = await self.http.post(lease.url + "/tokenize", json={"model": call.model, "prompt": prompt + "\n"},
                                          timeout=httpx.Timeout(10.0, connect=5.0))
            count = answer.json().get("count") if answer.is_success else None
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning("tokenize failed; prompt token count 0", inference_id=call.inference_id, error=str(exc))
            return None
        return count if isinstance(count, int) and count > 0 else None

    async def _finish(self, call: _Call, values: FinishValues, started: float,
                      first_byte: float | None = None) -> None:
        elapsed = time.monotonic() - started
        if values.problem:
            log.warning("no MsgFinishInference", inference_id=call.inference_id, reason=values.problem)
            self._failed(call, values.problem, started)
            return
        h = call.headers
        signed = ta_signed_bytes(call.raw, h.timestamp, h.transfer_address, self.address)
        message = itx.MsgFinishInference(
            creator=self.address, inference_id=call.inference_id, response_hash=values.response_hash,
            response_payload=values.response_payload, prompt_token_count=values.prompt_tokens,
            completion_token_count=values.completion_tokens, executed_by=self.address,
            transferred_by=h.transfer_address, transfer_signature=call.ta_signature,
            executor_signature=sign(self.signer, signed), request_timestamp=h.timestamp,
            requested_by=h.requester, original_prompt=call.raw.decode("utf-8", errors="replace"),
            model=values.model or call.model,
        )
        try:
            await self.sink.submit(message)
        except Exception as exc:  # the sink logs its own failures; the answer has been sent already
            log.error("MsgFinishInference not taken", inference_id=call.inference_id, error=str(exc))
            self._failed(call, "finish not queued", started)
            return
        self.stats.record(Role.EXECUTOR, call.model, "ok", elapsed, inference_id=call.inference_id,
                          executor=self.address, first_byte=first_byte,
                          tokens=values.prompt_tokens + values.completion_tokens)

    def _failed(self, call: _Call, outcome: str, started: float) -> None:
        self.stats.record(Role.EXECUTOR, call.model, outcome, time.monotonic() - started,
                          inference_id=call.inference_id, executor=self.address)
