"""compareLogits and the re-run helpers, from the rules of reference/inference.md §4.2-§4.3."""

from __future__ import annotations

import hashlib
import json

import pytest

from dapi.inference.comparison import (
    ComparisonError,
    compare_logits,
    executor_text,
    logprob_list,
    position_distance,
    response_hash,
    validation_request,
)


def entry(token: str, top: list[tuple[str, float]]) -> dict[str, object]:
    return {"token": token, "logprob": top[0][1] if top else -1.0,
            "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}


TOP = [("a", -0.1), ("b", -2.0), ("c", -3.0)]


def test_identical_logprobs_are_similarity_one() -> None:
    o = [entry("a", TOP), entry("b", TOP)]
    assert compare_logits(o, [dict(e) for e in o]) == 1.0


def test_different_length_or_tokens_pass_with_one() -> None:
    o = [entry("a", TOP), entry("b", TOP)]
    assert compare_logits(o, o[:1]) == 1.0
    assert compare_logits(o, [entry("a", TOP), entry("zzz", [("q", -9.0)])]) == 1.0


def test_position_distance_uses_the_extrapolated_fill_for_missing_tokens() -> None:
    # smallest -3, second -2: fill = -3 - (-2 - -3) = -4.
    v = [{"token": "a", "logprob": -0.1}, {"token": "x", "logprob": -1.0}]
    o = [{"token": t, "logprob": lp} for t, lp in TOP]
    expected = 0.0 + abs(-1.0 - -4.0) / (1e-6 + 1.0 + 4.0) / 2
    assert position_distance(o, v) == pytest.approx(expected)
    # One original entry: the second is a - 100, so the fill is a + 100.
    single = [{"token": "a", "logprob": -5.0}]
    assert position_distance(single, [{"token": "x", "logprob": -1.0}]) == pytest.approx(
        abs(-1.0 - 95.0) / (1e-6 + 1.0 + 95.0) / 2)
    # The last entry of a repeated token wins.
    twice = [{"token": "a", "logprob": -5.0}, {"token": "a", "logprob": -1.0}, {"token": "b", "logprob": -2.0}]
    assert position_distance(twice, [{"token": "a", "logprob": -1.0}]) == 0.0
    with pytest.raises(ComparisonError):
        position_distance([], v)


def test_similarity_is_normalised_by_at_least_100_positions_times_the_top_width() -> None:
    shifted = [("a", -0.2), ("b", -2.0), ("c", -3.0)]
    o, v = [entry("a", TOP)], [entry("a", shifted)]
    d = abs(-0.2 - -0.1) / (1e-6 + 0.2 + 0.1) / 2
    assert compare_logits(o, v) == pytest.approx(1 - d / (100 * 3))
    many_o, many_v = [entry("a", TOP)] * 200, [entry("a", shifted)] * 200
    assert compare_logits(many_o, many_v) == pytest.approx(1 - 200 * d / (200 * 3))


def test_empty_top_logprobs_give_zero_and_the_similarity_is_not_negative() -> None:
    assert compare_logits([entry("a", TOP), entry("b", [])], [entry("a", TOP), entry("b", TOP)]) == 0.0
    far_o = [entry("a", [("a", -0.0001), ("b", -0.0002)])] * 100
    far_v = [entry("a", [("x", -50.0), ("y", -60.0)])] * 100
    assert 0.0 <= compare_logits(far_o, far_v) < 0.6


def test_executor_text_and_logprobs_of_a_json_answer_and_of_a_stream() -> None:
    body = {"choices": [{"message": {"content": "Hi there"}, "logprobs": {"content": [entry("Hi", TOP)]}},
                        {"message": {"content": "other"}, "logprobs": {"content": [entry("o", TOP)]}}]}
    assert executor_text(json.dumps(body)) == "Hi there"
    assert [e["token"] for e in logprob_list([body])] == ["Hi", "o"]
    chunks = [{"choices": [{"delta": {"content": "Hi"}, "logprobs": {"content": [entry("Hi", TOP)]}}]},
              {"choices": [{"delta": {"content": " there"}}]}, {"choices": [], "usage": {"completion_tokens": 2}}]
    events = [f"data: {json.dumps(c)}" for c in chunks] + ["data: [DONE]", ""]
    assert executor_text(json.dumps({"events": events})) == "Hi there"
    with pytest.raises(ComparisonError):
        executor_text(json.dumps({"choices": [{"message": {"content": ""}}]}))


def test_validation_request_forces_the_text_and_keeps_the_sampling_settings() -> None:
    payload = json.dumps({"model": "m", "seed": 7, "logprobs": True, "top_logprobs": 5, "max_tokens": 12,
                          "stream": True, "stream_options": {"include_usage": True}})
    request = validation_request(payload, "Hi")
    assert request == {"model": "m", "seed": 7, "logprobs": True, "top_logprobs": 5, "max_tokens": 12,
                       "stream": False, "enforced_str": "Hi"}


def test_response_hash_is_over_all_choices_contents() -> None:
    body = {"choices": [{"message": {"content": "a"}}, {"message": {"content": "b"}}]}
    assert response_hash(body) == hashlib.sha256(b"ab").hexdigest()
