"""Simulated ML nodes serving inference like vLLM: shapes, determinism, the §5.5 hashes, the §4.2 re-run.

Real HTTP on loopback (the server on an OS-chosen port) with httpx, the way the dAPI talks to a node.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from dapi.devnet.mlnode import SimMLNodeServer

MODEL = "Qwen/Qwen2.5-7B-Instruct"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What does a proof of compute prove?"},
]


@pytest.fixture
def sim_options() -> dict[str, Any]:
    return {"batch_interval": 0.05, "nodes": ("n1", "n2")}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def load(http: httpx.AsyncClient, sim: SimMLNodeServer, name: str, model: str = MODEL) -> str:
    resp = await http.post(sim.node_url(name) + "/api/v1/inference/up", json={"model": model, "dtype": "bfloat16"})
    assert resp.json() == {"status": "OK"}
    return sim.node_url(name)


def executor_body(**changes: Any) -> dict[str, Any]:
    """A body as the executor sends it after ModifyRequestBody (inference.md §5.1)."""
    body = {
        "logprobs": True,
        "max_completion_tokens": 5000,
        "max_tokens": 5000,
        "messages": MESSAGES,
        "model": MODEL,
        "seed": 12345,
        "top_logprobs": 5,
    }
    body.update(changes)
    return body


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def complete(http: httpx.AsyncClient, base: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await http.post(base + "/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    return resp.json()


async def stream(http: httpx.AsyncClient, base: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The data chunks of a streamed answer; checks the SSE framing and the final `data: [DONE]`."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    resp = await http.post(base + "/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [e for e in resp.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    return [json.loads(e.removeprefix("data: ")) for e in events[:-1]]


# --- inference.md §5.5 and §4.2, written from the spec ---------------------------------------------


def response_hash(body: dict[str, Any]) -> str:
    """§5.5 non-stream: sha256hex of the concatenated choices[i].message.content."""
    return hashlib.sha256("".join(c["message"]["content"] for c in body["choices"]).encode()).hexdigest()


def stream_response_hash(chunks: list[dict[str, Any]]) -> str:
    """§5.5 stream: sha256hex of every chunk's choices' delta.content, in order."""
    text = "".join(c["delta"].get("content") or "" for chunk in chunks for c in chunk["choices"])
    return hashlib.sha256(text.encode()).hexdigest()


def logprob_list(body_or_chunks: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """§4.2 step 4: all choices[*].logprobs.content concatenated (over every chunk of a stream)."""
    bodies = body_or_chunks if isinstance(body_or_chunks, list) else [body_or_chunks]
    return [e for b in bodies for c in b["choices"] if c.get("logprobs") for e in c["logprobs"]["content"]]


def pos_dist(o_top: list[dict[str, Any]], v_top: list[dict[str, Any]]) -> float:
    """§4.2 posDist."""
    if not o_top or not v_top:
        raise ValueError("empty top_logprobs")
    o_map = {e["token"]: e["logprob"] for e in o_top}  # last wins
    values = sorted(o_map.values())
    a = values[0]
    b = values[1] if len(values) > 1 else a - 100
    fill = a - (b - a)
    total = 0.0
    for v in v_top:
        o_lp = o_map.get(v["token"], fill)
        total += abs(v["logprob"] - o_lp) / (1e-6 + abs(v["logprob"]) + abs(o_lp)) / 2
    return total


def compare_logits(o: list[dict[str, Any]], v: list[dict[str, Any]]) -> float:
    """§4.2 compareLogits: different lengths or tokens pass (1.0); else the similarity."""
    if len(o) != len(v) or any(x["token"] != y["token"] for x, y in zip(o, v, strict=True)):
        return 1.0
    total = sum(pos_dist(x["top_logprobs"], y["top_logprobs"]) for x, y in zip(o, v, strict=True))
    return max(0.0, 1 - total / (max(100, len(o)) * len(o[0]["top_logprobs"])))


def validation_body(prompt_payload: dict[str, Any], executor_text: str) -> dict[str, Any]:
    """§4.2 step 3: the prompt payload with enforced_str, stream false, no stream_options."""
    body = {**prompt_payload, "enforced_str": executor_text, "stream": False}
    body.pop("stream_options", None)
    return body


MAINNET_VALIDATION_THRESHOLD = 0.98  # §4.4 step 5: passed = value > model.validation_threshold


# --- golden vectors ----------------------------------------------------------------------------------


# inference.md §5.5 worked example, verbatim.
GOLDEN_TEXT = "Hello! How can I assist you today?"
GOLDEN_HASH = "cd153d3c18e782c4f4b3ceec574adccc8e68bc557110b0bc263b01e09bfcc8ef"
GOLDEN_PAYLOAD = '{"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"Hello! How can I assist you today?","reasoning_content":null,"role":"assistant","tool_calls":[]},"stop_reason":null}],"created":1747692816,"id":"INFID","model":"Qwen/Qwen2.5-7B-Instruct","object":"chat.completion","prompt_logprobs":null,"usage":{"completion_tokens":10,"prompt_tokens":31,"prompt_tokens_details":null,"total_tokens":41}}'


def test_response_hash_matches_the_spec_worked_example() -> None:
    assert response_hash(json.loads(GOLDEN_PAYLOAD)) == GOLDEN_HASH
    streamed = [{"choices": [{"delta": {"role": "assistant", "content": ""}}]}]
    streamed += [{"choices": [{"delta": {"content": piece}}]} for piece in ("Hello!", " How can", " I assist you", " today?")]
    streamed += [{"choices": [{"delta": {}}]}, {"choices": [], "usage": {}}]
    assert stream_response_hash(streamed) == GOLDEN_HASH


async def test_a_node_forced_along_the_golden_text_answers_it_and_hashes_to_the_golden_hash(
    sim: SimMLNodeServer, http: httpx.AsyncClient
) -> None:
    base = await load(http, sim, "n1")
    body = executor_body(enforced_str=GOLDEN_TEXT)
    plain = await complete(http, base, body)
    assert plain["choices"][0]["message"]["content"] == GOLDEN_TEXT
    assert plain["choices"][0]["finish_reason"] == "stop"
    assert response_hash(plain) == GOLDEN_HASH
    assert stream_response_hash(await stream(http, base, body)) == GOLDEN_HASH


def test_compare_logits_port_follows_the_rules() -> None:
    # The §4.2 golden fixtures (the upstream testdata files, 100 tokens each) are not reproduced in the
    # spec, so the port is checked on small cases worked by hand from the rules instead.
    def entry(token: str, top: list[tuple[str, float]]) -> dict[str, Any]:
        return {"token": token, "logprob": top[0][1], "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}

    o = [entry("a", [("a", -1.0), ("b", -2.0)])]
    assert compare_logits(o, o) == 1.0
    assert compare_logits(o, o + o) == 1.0  # DifferentLength passes
    assert compare_logits(o, [entry("c", [("c", -1.0), ("b", -2.0)])]) == 1.0  # DifferentTokens passes
    # a = -2, b = -1, fill = -3: |-1.5 - -1| / (1e-6 + 1.5 + 1) / 2 + |-3 - fill| / ... = 0.1 - 4e-8
    v = [entry("a", [("a", -1.5), ("c", -3.0)])]
    assert compare_logits(o, v) == pytest.approx(1 - (0.5 / (1e-6 + 2.5) / 2) / (100 * 2), abs=1e-12)
    with pytest.raises(ValueError):
        compare_logits([entry("a", [("a", -1.0)])], [{"token": "a", "logprob": -1.0, "top_logprobs": []}])


# --- shapes and determinism ---------------------------------------------------------------------------


async def test_plain_answer_has_vllms_shape(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    base = await load(http, sim, "n1")
    body = await complete(http, base, executor_body())
    assert list(body) == ["id", "object", "created", "model", "choices", "usage", "prompt_logprobs"]
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == MODEL and body["prompt_logprobs"] is None
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["stop_reason"] is None and choice["finish_reason"] == "stop"
    message = choice["message"]
    assert message["role"] == "assistant" and message["tool_calls"] == [] and message["reasoning_content"] is None
    assert message["content"] and "<|im_end|>" not in message["content"]
    content = choice["logprobs"]["content"]
    # The stop token ends the logprobs (as vLLM lists it) and counts as a completion token, not as text.
    assert content[-1]["token"] == "<|im_end|>"
    assert "".join(e["token"] for e in content[:-1]) == message["content"]
    usage = body["usage"]
    assert usage["completion_tokens"] == len(content)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] is None
    for e in content:
        assert e["bytes"] == list(e["token"].encode()) and e["logprob"] <= 0
        top = e["top_logprobs"]
        assert len(top) == 5 and [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert all(t["bytes"] == list(t["token"].encode()) for t in top)
        assert e["logprob"] in [t["logprob"] for t in top if t["token"] == e["token"]] or e["logprob"] < top[-1]["logprob"]


async def test_stream_and_plain_answers_agree_token_for_token(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    base = await load(http, sim, "n1")
    plain = await complete(http, base, executor_body())
    chunks = await stream(http, base, executor_body())
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    *token_chunks, usage_chunk = chunks
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == {
        k: plain["usage"][k] for k in ("prompt_tokens", "total_tokens", "completion_tokens")
    }
    last = token_chunks[-1]["choices"][0]
    assert (last["finish_reason"], last["stop_reason"]) == (plain["choices"][0]["finish_reason"], None)
    assert all(c["choices"][0]["finish_reason"] is None for c in token_chunks[:-1])

    text = "".join(c["choices"][0]["delta"]["content"] for c in token_chunks)
    assert text == plain["choices"][0]["message"]["content"]
    assert logprob_list(chunks) == logprob_list(plain)
    assert stream_response_hash(chunks) == response_hash(plain)


async def test_answer_is_a_function_of_model_seed_and_messages(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    base1, base2 = await load(http, sim, "n1"), await load(http, sim, "n2")
    first = await complete(http, base1, executor_body())
    again = await complete(http, base2, executor_body())  # another node serving the same model
    assert first["choices"] == again["choices"] and first["usage"] == again["usage"]
    other_seed = await complete(http, base1, executor_body(seed=54321))
    assert other_seed["choices"][0]["message"]["content"] != first["choices"][0]["message"]["content"]
    other_messages = await complete(http, base1, executor_body(messages=[{"role": "user", "content": "Hi"}]))
    assert other_messages["choices"][0]["message"]["content"] != first["choices"][0]["message"]["content"]
    await load(http, sim, "n2", model="other/model")
    other_model = await complete(http, base2, executor_body(model="other/model"))
    assert other_model["choices"][0]["message"]["content"] != first["choices"][0]["message"]["content"]


async def test_max_tokens_cut_the_answer_with_finish_reason_length(
    sim: SimMLNodeServer, http: httpx.AsyncClient
) -> None:
    base = await load(http, sim, "n1")
    full = await complete(http, base, executor_body())
    cut = await complete(http, base, executor_body(max_tokens=7, max_completion_tokens=7))
    assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 7
    assert logprob_list(cut) == logprob_list(full)[:7]
    assert full["choices"][0]["message"]["content"].startswith(cut["choices"][0]["message"]["content"])
    # max_completion_tokens wins over max_tokens, as in vLLM
    assert (await complete(http, base, executor_body(max_tokens=50, max_completion_tokens=3)))["usage"][
        "completion_tokens"
    ] == 3
    ignoring = await complete(http, base, executor_body(max_tokens=300, max_completion_tokens=300, ignore_eos=True))
    assert ignoring["usage"]["completion_tokens"] == 300 and ignoring["choices"][0]["finish_reason"] == "length"


async def test_logprobs_only_when_asked(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    base = await load(http, sim, "n1")
    bare = await complete(http, base, {"model": MODEL, "messages": MESSAGES, "seed": 1})
    assert bare["choices"][0]["logprobs"] is None
    no_top = await complete(http, base, {"model": MODEL, "messages": MESSAGES, "seed": 1, "logprobs": True})
    assert all(e["top_logprobs"] == [] for e in logprob_list(no_top))
    assert no_top["choices"][0]["message"] == bare["choices"][0]["message"]


async def test_n_choices_each_sampled_and_streamed_by_index(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    base = await load(http, sim, "n1")
    single = await complete(http, base, executor_body())
    double = await complete(http, base, executor_body(n=2))
    assert [c["index"] for c in double["choices"]] == [0, 1]
    assert double["choices"][0] == single["choices"][0]
    assert double["choices"][1]["message"]["content"] != double["choices"][0]["message"]["content"]
    chunks = await stream(http, base, executor_body(n=2))
    for index in (0, 1):
        text = "".join(c["delta"].get("content", "") for ch in chunks for c in ch["choices"] if c["index"] == index)
        assert text == double["choices"][index]["message"]["content"]
    assert stream_response_hash(chunks) != response_hash(double)  # the chunks interleave the two texts


# --- the validation re-run (inference.md §4.2) --------------------------------------------------------


async def test_enforced_rerun_reproduces_an_honest_answer_exactly(
    sim: SimMLNodeServer, http: httpx.AsyncClient
) -> None:
    executor, validator = await load(http, sim, "n1"), await load(http, sim, "n2")
    payload = executor_body()
    original = await complete(http, executor, payload)
    rerun = await complete(http, validator, validation_body(payload, original["choices"][0]["message"]["content"]))
    assert rerun["choices"][0]["message"] == original["choices"][0]["message"]
    assert logprob_list(rerun) == logprob_list(original)  # token for token, logprob for logprob
    assert rerun["usage"] == original["usage"]
    assert compare_logits(logprob_list(original), logprob_list(rerun)) == 1.0

    # A streamed original: the text is the concatenated deltas, the logprobs those of every chunk.
    streamed_payload = {**payload, "seed": 777, "stream": True, "stream_options": {"include_usage": True}}
    chunks = await stream(http, executor, streamed_payload)
    text = "".join(c["delta"].get("content", "") for ch in chunks for c in ch["choices"])
    rerun = await complete(http, validator, validation_body(streamed_payload, text))
    assert logprob_list(rerun) == logprob_list(chunks)
    assert compare_logits(logprob_list(chunks), logprob_list(rerun)) == 1.0


async def test_enforced_rerun_exposes_a_wrong_answer(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    executor, validator = await load(http, sim, "n1"), await load(http, sim, "n2")
    patched = await http.patch(sim.url + "/sim/nodes/n1", json={"wrong_output": True})
    assert patched.json()["wrong_output"] is True
    payload = executor_body()
    wrong = await complete(http, executor, payload)
    honest = await complete(http, validator, payload)
    assert wrong["choices"][0]["message"]["content"] != honest["choices"][0]["message"]["content"]

    rerun = await complete(http, validator, validation_body(payload, wrong["choices"][0]["message"]["content"]))
    o, v = logprob_list(wrong), logprob_list(rerun)
    assert [e["token"] for e in o] == [e["token"] for e in v]  # same text, same tokens: the logprobs decide
    assert o != v
    assert compare_logits(o, v) < MAINNET_VALIDATION_THRESHOLD
    # The wrong node's own re-runs stay honest: as a validator it passes an honest answer.
    own_rerun = await complete(http, executor, validation_body(payload, honest["choices"][0]["message"]["content"]))
    assert compare_logits(logprob_list(honest), logprob_list(own_rerun)) == 1.0


async def test_enforced_text_longer_than_max_tokens_is_cut(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    base = await load(http, sim, "n1")
    body = await complete(http, base, executor_body(max_tokens=3, max_completion_tokens=3, enforced_str=GOLDEN_TEXT))
    assert body["choices"][0]["message"]["content"] == "Hello! How can"
    assert (body["choices"][0]["finish_reason"], body["usage"]["completion_tokens"]) == ("length", 3)


# --- when a node answers, and errors ------------------------------------------------------------------


async def test_answers_only_while_inference_with_the_model_loaded(
    sim: SimMLNodeServer, http: httpx.AsyncClient
) -> None:
    base = sim.node_url("n1")
    chat = executor_body()
    for path, body in (("/v1/chat/completions", chat), ("/tokenize", {"model": MODEL, "prompt": "x"})):
        assert (await http.post(base + path, json=body)).status_code == 503  # STOPPED

    sim.node("n1").load_delay = 0.5
    up = http.post(base + "/api/v1/inference/up", json={"model": MODEL, "dtype": "bfloat16"})
    loading = asyncio.create_task(up)
    await wait_until(lambda: sim.node("n1").model == MODEL)
    assert (await http.post(base + "/v1/chat/completions", json=chat)).status_code == 503  # still loading
    assert (await loading).json() == {"status": "OK"}
    assert (await http.post(base + "/v1/chat/completions", json=chat)).status_code == 200

    wrong_model = await http.post(base + "/v1/chat/completions", json=executor_body(model="other/model"))
    assert wrong_model.status_code == 404
    assert wrong_model.json() == {
        "object": "error",
        "message": "The model `other/model` does not exist.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }
    assert (await http.post(base + "/tokenize", json={"model": "other/model", "prompt": "x"})).status_code == 404
    assert (await http.post(base + "/v1/chat/completions", json={"messages": MESSAGES})).status_code == 200

    await http.post(base + "/api/v1/inference/down")
    assert (await http.post(base + "/v1/chat/completions", json=chat)).status_code == 503


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b"{}",
        b'{"messages": "hello"}',
        b'{"messages": [{"content": "no role"}]}',
        b'{"messages": [{"role": "user", "content": 5}]}',
        b'{"messages": [], "max_tokens": 0}',
        b'{"messages": [], "max_tokens": "many"}',
        b'{"messages": [], "max_tokens": 40000}',
        b'{"messages": [], "logprobs": true, "top_logprobs": 21}',
        b'{"messages": [], "top_logprobs": 5}',
        b'{"messages": [], "temperature": -1}',
        b'{"messages": [], "n": 0}',
        b'{"messages": [], "seed": 1e30}',
        b'{"messages": [], "stream_options": {"include_usage": true}}',
        b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}',
    ],
    ids=lambda b: b.decode()[:40],
)
async def test_malformed_requests_get_vllms_400(sim: SimMLNodeServer, http: httpx.AsyncClient, body: bytes) -> None:
    base = await load(http, sim, "n1")
    resp = await http.post(base + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400
    error = resp.json()
    assert (error["object"], error["type"], error["code"]) == ("error", "BadRequestError", 400)
    assert isinstance(error["message"], str) and error["message"]


async def test_tokenize_answers_like_vllm(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    base = await load(http, sim, "n1")
    # What the executor sends for a zero prompt count (§5.5): the contents joined, plus "\n".
    prompt = "".join(m["content"] for m in MESSAGES) + "\n"
    resp = await http.post(base + "/tokenize", json={"model": MODEL, "prompt": prompt})
    body = resp.json()
    assert resp.status_code == 200 and set(body) == {"count", "max_model_len", "tokens", "token_strs"}
    assert body["count"] == len(body["tokens"]) > 0 and all(isinstance(t, int) for t in body["tokens"])
    assert body["max_model_len"] >= 5000
    chat_form = (await http.post(base + "/tokenize", json={"model": MODEL, "messages": MESSAGES})).json()
    assert chat_form["count"] == (await complete(http, base, executor_body()))["usage"]["prompt_tokens"]
    assert (await http.post(base + "/tokenize", content=b"nope")).status_code == 400


async def test_faults_apply_to_the_inference_routes(sim: SimMLNodeServer, http: httpx.AsyncClient) -> None:
    base = await load(http, sim, "n1")
    sim.set_fault("n1", status=500, path_prefix="/v1/chat", count=1)
    failed = await http.post(base + "/v1/chat/completions", json=executor_body())
    assert (failed.status_code, failed.json()) == (500, {"detail": "simulated fault"})
    assert (await http.post(base + "/v1/chat/completions", json=executor_body())).status_code == 200
    calls = [c for c in sim.calls("n1") if c.path == "/v1/chat/completions"]
    assert [c.fault for c in calls] == ["status:500", None] and calls[0].json == executor_body()

    sim.set_fault("n1", refuse=True, path_prefix="/tokenize")
    with pytest.raises(httpx.TransportError):
        await http.post(base + "/tokenize", json={"model": MODEL, "prompt": "x"})
