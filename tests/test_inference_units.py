"""The daemon's inference path, piece by piece (reference/inference.md §3.1, §5.5, §7.1-§7.2): request checks,
the bandwidth limiter, the answer rewrite and Finish values, the TA's request parse, the local executor draw."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from typing import Any

import pytest

from dapi.chain.epochs import Epoch, EpochContext, Phase
from dapi.chain.store import StoredValue
from dapi.chain.view import ChainSnapshot
from dapi.devnet.genesis import load_genesis
from dapi.gen.inference.inference.activeparticipants_pb2 import ActiveParticipant, ActiveParticipants, ModelMLNodes
from dapi.gen.inference.inference.epoch_group_data_pb2 import MLNodeInfo
from dapi.gen.inference.inference.params_pb2 import BandwidthLimitsParams, Decimal, Params
from dapi.inference import directory as directory_module
from dapi.inference.bandwidth import BandwidthLimiter, request_kb
from dapi.inference.checks import (
    Rejected,
    ReplayGuard,
    RequestHeaders,
    Role,
    check_timestamp,
    replay_window_blocks,
)
from dapi.inference.directory import Candidate, EpochParticipants, ExecutorDirectory, pick, poc_filter_applies
from dapi.inference.responses import DONE_LINE, StreamRewriter, rewrite_json
from dapi.inference.transfer_agent import parse_chat_request

S = 1_000_000_000  # ns per second
BLOCK_TIME = 1_750_000_000 * S

# --- checks (inference.md §7.1 steps 2, 6, 7) ----------------------------------------------------------


def test_headers_need_authorization_and_default_the_transfer_address() -> None:
    with pytest.raises(Rejected) as refused:
        RequestHeaders.parse({"x-requester-address": "gonka1r"}, "gonka1own")
    assert (refused.value.status, refused.value.message) == (401, "Authorization is required")
    h = RequestHeaders.parse({"authorization": "sig", "x-requester-address": "gonka1r", "x-timestamp": "12"},
                             "gonka1own")
    assert (h.authorization, h.requester, h.timestamp, h.transfer_address) == ("sig", "gonka1r", 12, "gonka1own")
    h = RequestHeaders.parse({"authorization": "sig", "x-requester-address": "gonka1r", "x-timestamp": "soon",
                              "x-transfer-address": "gonka1ta"}, "gonka1own")
    assert (h.timestamp, h.transfer_address) == (0, "gonka1ta")  # unparsable is 0, as the reference


def _refusal(timestamp: int, expiration: int, advance: int) -> str | None:
    try:
        check_timestamp(timestamp, BLOCK_TIME, expiration, advance)
    except Rejected as refused:
        assert refused.status == 400
        return refused.message
    return None


@pytest.mark.parametrize(("expiration", "advance"), [(60, 30), (5, 3), (0, 0)])
def test_timestamp_window_is_the_chains_with_10_s_when_a_param_is_zero(expiration: int, advance: int) -> None:
    old = (expiration or 10) * S
    ahead = (advance or 10) * S
    assert _refusal(BLOCK_TIME - old, expiration, advance) is None  # the edges are inside
    assert _refusal(BLOCK_TIME + ahead, expiration, advance) is None
    assert _refusal(BLOCK_TIME - old - 1, expiration, advance) == "Request timestamp is too old"
    assert _refusal(BLOCK_TIME + ahead + 1, expiration, advance) == "Request timestamp is in the future"
    assert _refusal(0, expiration, advance) == "Request timestamp is too old"  # no or unparsable X-Timestamp


def test_replay_window_is_max_4_and_half_the_expiration_in_blocks() -> None:
    assert replay_window_blocks(60) == 30  # mainnet
    assert replay_window_blocks(20) == 10
    assert replay_window_blocks(6) == 4
    assert replay_window_blocks(0) == 5  # the 10 s fallback


def test_an_authorization_is_used_once_per_role_until_it_is_pruned() -> None:
    guard = ReplayGuard()
    guard.record("A", Role.TRANSFER_AGENT, 100, 4)
    guard.record("A", Role.EXECUTOR, 101, 4)  # the other role is a separate use
    with pytest.raises(Rejected) as ta:
        guard.record("A", Role.TRANSFER_AGENT, 102, 4)
    assert (ta.value.status, ta.value.message) == (400, "AuthKey has already been used for a transfer request")
    with pytest.raises(Rejected) as ex:
        guard.record("A", Role.EXECUTOR, 104, 4)
    assert (ex.value.status, ex.value.message) == (400, "AuthKey has already been used for an executor request")
    guard.record("B", Role.EXECUTOR, 104, 4)
    assert len(guard) == 2
    # Still refused `window` blocks after the first use, forgotten one block later.
    with pytest.raises(Rejected):
        guard.record("A", Role.EXECUTOR, 100 + 4, 4)
    guard.record("A", Role.TRANSFER_AGENT, 100 + 5, 4)
    assert len(guard) == 2  # A again (a new entry), B kept: recorded at 104
    guard.record("C", Role.TRANSFER_AGENT, 200, 4)
    assert len(guard) == 1  # A and B pruned


# --- bandwidth (inference.md §7.2) -------------------------------------------------------------------

MAINNET_BANDWIDTH = BandwidthLimitsParams(estimated_limits_per_block_kb=10752,
                                          kb_per_input_token=Decimal(value=23, exponent=-4),
                                          kb_per_output_token=Decimal(value=64, exponent=-2))


def test_bandwidth_example_of_the_reference() -> None:
    limit = BandwidthLimiter.limit_per_block(MAINNET_BANDWIDTH, 10)
    assert limit == pytest.approx(1075.2)
    kb = request_kb(MAINNET_BANDWIDTH, 0, 5000)
    assert kb == pytest.approx(3200.0)
    assert request_kb(MAINNET_BANDWIDTH, 1000, 0) == pytest.approx(2.3)
    assert request_kb(BandwidthLimitsParams(), 1000, 5000) == pytest.approx(2.3 + 3200.0)  # defaults when unset
    limiter = BandwidthLimiter()
    tickets = []
    while (t := limiter.acquire(height=100, lifespan=20, limit_per_block_kb=limit, kb=kb)) is not None:
        tickets.append(t)
        assert len(tickets) < 100
    assert len(tickets) == 7  # 7 · 3200 ≤ 21 · 1075.2 < 8 · 3200
    assert limiter.in_flight_kb(100) == pytest.approx(7 * 3200)
    limiter.release(tickets[0])  # a request that ended frees its share at once
    assert limiter.acquire(height=100, lifespan=20, limit_per_block_kb=limit, kb=kb) is not None
    assert limiter.acquire(height=100, lifespan=20, limit_per_block_kb=limit, kb=kb) is None
    # A request still unreleased stops counting `lifespan` blocks after it was accepted.
    assert limiter.acquire(height=121, lifespan=20, limit_per_block_kb=limit, kb=kb) is not None


def test_bandwidth_limit_uses_the_default_total_and_never_divides_by_zero() -> None:
    assert BandwidthLimiter.limit_per_block(BandwidthLimitsParams(), 3) == pytest.approx(21504 / 3)
    assert BandwidthLimiter.limit_per_block(MAINNET_BANDWIDTH, 0) == pytest.approx(10752)


# --- responses (inference.md §5.4-§5.5) ---------------------------------------------------------------

CONTENT = "Hello! How can I assist you today?"
CONTENT_HASH = "cd153d3c18e782c4f4b3ceec574adccc8e68bc557110b0bc263b01e09bfcc8ef"
MODEL = "Qwen/Qwen2.5-7B-Instruct"
# The vLLM answer of the reference's fixture (D/completionapi/test_data/response.json), in vLLM's key order.
VLLM_ANSWER = (
    '{"id":"chatcmpl-5e1c","object":"chat.completion","created":1747692816,"model":"Qwen/Qwen2.5-7B-Instruct",'
    '"choices":[{"index":0,"message":{"role":"assistant","reasoning_content":null,'
    '"content":"Hello! How can I assist you today?","tool_calls":[]},"logprobs":null,"finish_reason":"stop",'
    '"stop_reason":null}],"usage":{"prompt_tokens":31,"total_tokens":41,"completion_tokens":10,'
    '"prompt_tokens_details":null},"prompt_logprobs":null}'
)
EXPECTED_PAYLOAD = (
    '{"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"Hello! How can I assist '
    'you today?","reasoning_content":null,"role":"assistant","tool_calls":[]},"stop_reason":null}],'
    '"created":1747692816,"id":"INFID","model":"Qwen/Qwen2.5-7B-Instruct","object":"chat.completion",'
    '"prompt_logprobs":null,"usage":{"completion_tokens":10,"prompt_tokens":31,"prompt_tokens_details":null,'
    '"total_tokens":41}}'
)


def test_json_answer_gets_the_inference_id_and_the_reference_payload_byte_for_byte() -> None:
    assert hashlib.sha256(CONTENT.encode()).hexdigest() == CONTENT_HASH
    body, values = rewrite_json(VLLM_ANSWER.encode(), "INFID")
    assert body.decode() == EXPECTED_PAYLOAD
    assert values.response_payload == EXPECTED_PAYLOAD  # what the client got is what Finish carries
    assert (values.response_hash, values.prompt_tokens, values.completion_tokens, values.model, values.problem) == (
        CONTENT_HASH, 31, 10, MODEL, "")


def _chunk(**fields: Any) -> str:
    head = {"id": "chatcmpl-5e1c", "object": "chat.completion.chunk", "created": 1747692816, "model": MODEL}
    return "data: " + json.dumps({**head, **fields})


def _stream_lines(*, usage: bool = True) -> list[str]:
    pieces = ["Hello", "!", " How", " can", " I", " assist", " you", " today", "?"]
    lines = [_chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}]), ""]
    for piece in pieces:
        logprobs = {"content": [{"token": piece, "logprob": -0.1, "bytes": [1], "top_logprobs": []}]}
        lines += [_chunk(choices=[{"index": 0, "delta": {"content": piece}, "logprobs": logprobs,
                                   "finish_reason": None}]), ""]
    if usage:
        lines += [_chunk(choices=[], usage={"prompt_tokens": 31, "total_tokens": 41, "completion_tokens": 10}), ""]
    return [*lines, DONE_LINE, ""]


def test_stream_gets_the_id_on_every_chunk_and_the_same_hash_as_json() -> None:
    rewriter = StreamRewriter("INFID")
    sent = [rewriter.line(line) for line in _stream_lines()]
    data = [json.loads(line[len("data: "):]) for line in sent if line.startswith("data: {")]
    assert len(data) == 11 and all(chunk["id"] == "INFID" for chunk in data)
    assert sent[-2:] == [DONE_LINE, ""]  # passed through
    assert sent[0] == 'data: {"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,' \
                      '"index":0,"logprobs":null}],"created":1747692816,"id":"INFID",' \
                      '"model":"Qwen/Qwen2.5-7B-Instruct","object":"chat.completion.chunk"}'
    values = rewriter.finish_values()
    assert (values.response_hash, values.prompt_tokens, values.completion_tokens, values.model, values.problem) == (
        CONTENT_HASH, 31, 10, MODEL, "")
    assert json.loads(values.response_payload) == {"events": sent}  # every line, blanks and [DONE] included
    assert values.response_payload.startswith('{"events":["data: {\\"choices\\":')


def test_stream_without_usage_counts_logprobs_and_takes_the_tokenize_count() -> None:
    rewriter = StreamRewriter("INFID")
    for line in _stream_lines(usage=False):
        rewriter.line(line)
    assert rewriter.prompt_tokens == 0  # so the executor asks /tokenize
    values = rewriter.finish_values(prompt_tokens=17)
    assert (values.prompt_tokens, values.completion_tokens, values.problem) == (17, 9, "")


def test_answers_that_give_no_finish() -> None:
    answer = json.loads(VLLM_ANSWER)
    answer["choices"][0]["message"]["content"] = None
    answer["choices"][0]["message"]["tool_calls"] = [{"id": "call"}]
    _, values = rewrite_json(json.dumps(answer).encode(), "INFID")
    assert values.problem == "the answer has no content"
    answer = json.loads(VLLM_ANSWER)
    answer["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    _, values = rewrite_json(json.dumps(answer).encode(), "INFID")
    assert values.problem == "the answer reports no usage"
    rewriter = StreamRewriter("INFID")
    for line in [_chunk(choices=[{"index": 0, "delta": {"role": "assistant"}}]), "", DONE_LINE]:
        rewriter.line(line)
    assert rewriter.finish_values().problem == "the answer has no content"


# --- the TA's request parse (inference.md §7.1 steps 1, 4) -------------------------------------------


def _parse_refusal(body: object) -> str:
    with pytest.raises(Rejected) as refused:
        parse_chat_request(body if isinstance(body, bytes) else json.dumps(body).encode())
    assert refused.value.status == 400
    return refused.value.message


def test_bad_requests_are_400_naming_the_field() -> None:
    assert _parse_refusal(b"{not json").startswith("request body is not JSON")
    assert _parse_refusal([]) == "request body must be a JSON object"
    assert _parse_refusal({"messages": []}) == "model is required"
    assert _parse_refusal({"model": "m", "messages": {}}) == "messages must be a list"
    assert _parse_refusal({"model": "m", "messages": [{"content": "a"}, {"content": [{"type": "text"}]}]}) == \
        "messages[1].content must be a string"
    assert _parse_refusal({"model": "m", "messages": [], "max_tokens": 1.5}) == "max_tokens must be a 32-bit integer"
    assert _parse_refusal({"model": "m", "messages": [], "max_completion_tokens": True}) == \
        "max_completion_tokens must be a 32-bit integer"
    assert _parse_refusal({"model": "m", "messages": [], "seed": 2**31}) == "seed must be a 32-bit integer"


def test_prompt_estimate_is_bytes_of_the_contents_plus_a_newline() -> None:
    request = parse_chat_request(json.dumps({"model": "m", "messages": [
        {"role": "system", "content": "ab"}, {"role": "user", "content": "é"}, {"role": "user"}]}).encode())
    assert request.prompt_bytes == 2 + 2 + 1  # "é" is two UTF-8 bytes; the newline
    assert (request.escrow_tokens, request.start_max_tokens) == (5000, 5000)
    request = parse_chat_request(b'{"model":"m","messages":[],"max_tokens":7,"max_completion_tokens":9}')
    assert (request.prompt_bytes, request.escrow_tokens, request.start_max_tokens) == (1, 7, 9)


# --- the executor draw (inference.md §3.1) -----------------------------------------------------------

A, B = "Qwen/QwQ-32B", "Qwen/Qwen2.5-7B-Instruct"


def _participant(address: str, weight: int, models: dict[str, list[bool]]) -> ActiveParticipant:
    """`models`: per model, the POC_SLOT flag of each of its nodes."""
    return ActiveParticipant(
        index=address, weight=weight, inference_url=f"http://{address}", models=list(models),
        ml_nodes=[ModelMLNodes(ml_nodes=[MLNodeInfo(node_id=f"n{i}", timeslot_allocation=[True, slot])
                                         for i, slot in enumerate(slots)]) for slots in models.values()])


PARTICIPANTS = ActiveParticipants(participants=[
    _participant("p1", 10, {A: [False, True], B: [False]}),
    _participant("p2", 30, {A: [False]}),
    _participant("p3", 60, {B: [True], A: [False, False]}),
    _participant("p4", 5, {B: [False, True]}),
])


def _epoch() -> EpochParticipants:
    return EpochParticipants(1, StoredValue(PARTICIPANTS, PARTICIPANTS.SerializeToString(), 10))


def test_candidates_are_the_models_servers_and_during_poc_only_those_with_a_poc_slot_node() -> None:
    epoch = _epoch()
    assert epoch.candidates(A, poc_filter=False) == [
        Candidate("p1", 10, "http://p1"), Candidate("p2", 30, "http://p2"), Candidate("p3", 60, "http://p3")]
    assert [c.address for c in epoch.candidates(A, poc_filter=True)] == ["p1"]  # p3's POC_SLOT node serves B
    assert [c.address for c in epoch.candidates(B, poc_filter=True)] == ["p3", "p4"]
    assert epoch.candidates("other", poc_filter=False) == []
    assert (epoch.url_of("p2"), epoch.url_of("nobody")) == ("http://p2", None)


def test_poc_filter_from_poc_start_through_set_new_validators() -> None:
    params = load_genesis(None).epoch_params
    epoch = Epoch(2, 2 * params.epoch_length)
    ctx = EpochContext.for_epoch(epoch, params)

    def applies(height: int) -> bool:
        return poc_filter_applies(ChainSnapshot(height, "", epoch, Params(), params, True))

    assert ctx.phase_at(ctx.set_new_validators + 1) is Phase.INFERENCE
    assert [applies(h) for h in (ctx.start_of_poc, ctx.end_of_poc_validation, ctx.set_new_validators,
                                 ctx.set_new_validators + 1, ctx.next_poc_start - 1)] == [
        True, True, True, False, False]


async def test_effective_epoch_is_read_again_once_from_the_pre_poc_selection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A chain that re-selects the POC_SLOT flags before each PoC rewrites the effective epoch's participants
    # there (DESIGN.md §6.1): the draw during that PoC must follow the new flags, with one more read only.
    params = load_genesis(None).epoch_params
    assert params.pre_poc_selection_offset > 0
    epoch = Epoch(2, 2 * params.epoch_length)
    ctx = EpochContext.for_epoch(epoch, params)
    selection = ctx.pre_poc_selection
    assert selection is not None
    reads: list[int] = []

    async def fake_read(_rpc: object, epoch_index: int, height: int = 0) -> StoredValue:
        reads.append(epoch_index)
        return StoredValue(ActiveParticipants(), b"", height)

    class View:
        snapshot: ChainSnapshot | None = None

    view = View()
    monkeypatch.setattr(directory_module, "active_participants", fake_read)
    found = ExecutorDirectory(rpc=None, view=view)  # type: ignore[arg-type]

    def at(height: int, latest: Epoch = epoch) -> None:
        view.snapshot = ChainSnapshot(height, "", latest, Params(), params, True)

    for height in (ctx.set_new_validators + 1, selection - 1):
        at(height)
        await found.effective()
    assert reads == [2]
    for height in (selection, selection + 1):
        at(height)
        await found.effective()
    assert reads == [2, 2]
    at(ctx.next_poc_start + 1, Epoch(3, ctx.next_poc_start))  # the PoC it governs: still epoch 2, no read
    assert (await found.effective()).epoch_index == 2
    assert reads == [2, 2]


def test_draw_is_weight_proportional() -> None:
    members = _epoch().candidates(A, poc_filter=False)  # weights 10, 30, 60
    rng = random.Random(20240814)
    n = 20_000
    counts = Counter(pick(members, rng).address for _ in range(n))
    expected = {"p1": 0.1 * n, "p2": 0.3 * n, "p3": 0.6 * n}
    chi2 = sum((counts[k] - e) ** 2 / e for k, e in expected.items())
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001
    # A zero-weight member is never drawn; one member is always drawn.
    assert {pick([Candidate("z", 0, ""), Candidate("w", 1, "")], rng).address for _ in range(50)} == {"w"}


# --- chain facts: the block time -----------------------------------------------------------------


class _StatusRPC:
    def __init__(self) -> None:
        self.calls = 0

    async def status(self) -> Any:
        from dapi.chain.rpc import ChainNodeStatus

        self.calls += 1
        return ChainNodeStatus("c", self.calls, "", False, latest_block_time_ns=1_000 + self.calls)


async def test_the_block_time_comes_with_the_block_and_a_replayed_block_costs_one_status_query() -> None:
    from dapi.chain.view import ChainView
    from dapi.inference.chain_facts import ChainFacts

    rpc, view = _StatusRPC(), ChainView()
    facts = ChainFacts(None, rpc, view)  # type: ignore[arg-type]
    params = load_genesis(None).epoch_params
    view.update(ChainSnapshot(50, "", Epoch(1, 40), Params(), params, True, block_time_ns=777))
    assert [await facts.block_time_ns() for _ in range(3)] == [777] * 3 and rpc.calls == 0
    view.update(ChainSnapshot(51, "", Epoch(1, 40), Params(), params, True))  # replayed: no time read
    assert [await facts.block_time_ns() for _ in range(3)] == [1_001] * 3 and rpc.calls == 1
