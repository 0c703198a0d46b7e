"""The executor's body modification and Go's JSON encoding (reference/inference.md §5.1-§5.3, §5.5)."""

from __future__ import annotations

import hashlib

import pytest

from dapi.inference.request_body import (
    RequestBodyError,
    decode_go,
    go_float,
    go_marshal,
    modify_request_body,
    prompt_hash,
    prompt_payload,
)


def test_the_worked_example_of_the_reference() -> None:
    modified = modify_request_body(b'{"model":"m","messages":[]}', 12345)
    assert go_marshal(modified) == (b'{"logprobs":true,"max_completion_tokens":5000,"max_tokens":5000,'
                                    b'"messages":[],"model":"m","seed":12345,"top_logprobs":5}')
    payload = prompt_payload(modified)
    assert payload.endswith("}\n")
    assert prompt_hash(payload) == "680dc6254f1794375d3b8203d3f79573de5d220d3e8b8584853bf3247025b366"


@pytest.mark.parametrize(("value", "text"), [
    (1e-7, "1e-7"), (1e21, "1e+21"), (5000.0, "5000"), (0.7, "0.7"), (1e20, "100000000000000000000"),
    (-1.5e-7, "-1.5e-7"), (123456789.125, "123456789.125"), (0.0, "0"),
])
def test_floats_as_go_writes_them(value: float, text: str) -> None:
    assert go_float(value) == text


def test_the_rules_of_the_modification() -> None:
    body = modify_request_body(
        b'{"logprobs":false,"top_logprobs":20,"max_completion_tokens":7.9,"seed":null,"stream":true}', 9)
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    assert body["max_tokens"] == body["max_completion_tokens"] == 7
    assert body["seed"] is None  # a present null stays
    assert body["stream_options"] == {"include_usage": True}
    kept = modify_request_body(b'{"logprobs":"yes","max_tokens":0,"max_completion_tokens":30}', 9)
    assert kept["logprobs"] == "yes" and kept["max_tokens"] == kept["max_completion_tokens"] == 0
    assert kept["seed"] == 9
    for bad in (b'{"stream":"yes"}', b'{"stream":true,"stream_options":[]}', b"[]", b"{"):
        with pytest.raises(RequestBodyError):
            modify_request_body(bad, 1)


def test_html_escaping_differs_between_marshal_and_the_canonical_payload() -> None:
    value = {"b": "<a&b>\u2028\x01\n", "a": 1.0}
    assert go_marshal(value) == b'{"a":1,"b":"\\u003ca\\u0026b\\u003e\\u2028\\u0001\\n"}'
    assert go_marshal(value, escape_html=False) == b'{"a":1,"b":"<a&b>\\u2028\\u0001\\n"}'


def test_the_id_replacement_example_of_the_reference() -> None:
    vllm = (b'{"id":"chatcmpl-1","object":"chat.completion","created":1747692816,"model":"Qwen/Qwen2.5-7B-Instruct",'
            b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I assist you today?",'
            b'"reasoning_content":null,"tool_calls":[]},"logprobs":null,"finish_reason":"stop","stop_reason":null}],'
            b'"usage":{"prompt_tokens":31,"total_tokens":41,"completion_tokens":10,"prompt_tokens_details":null},'
            b'"prompt_logprobs":null}')
    answer = decode_go(vllm)
    answer["id"] = "INFID"
    assert go_marshal(answer) == (
        b'{"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"Hello! How can I '
        b'assist you today?","reasoning_content":null,"role":"assistant","tool_calls":[]},"stop_reason":null}],'
        b'"created":1747692816,"id":"INFID","model":"Qwen/Qwen2.5-7B-Instruct","object":"chat.completion",'
        b'"prompt_logprobs":null,"usage":{"completion_tokens":10,"prompt_tokens":31,"prompt_tokens_details":null,'
        b'"total_tokens":41}}')
    content = answer["choices"][0]["message"]["content"]
    assert hashlib.sha256(content.encode()).hexdigest() == (
        "cd153d3c18e782c4f4b3ceec574adccc8e68bc557110b0bc263b01e09bfcc8ef")
