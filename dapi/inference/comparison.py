"""Re-running an inference and comparing its logprobs: the validator's side (reference/inference.md §4.2-§4.3).

Pure functions, shared by the devnet's simulated validators and the daemon:

* ``executor_text(response_payload)``: the text the executor produced, from what MsgFinishInference
  carried (a JSON answer, or the devnet/reference `{"events": [...]}` list of SSE lines of a stream);
* ``validation_request(prompt_payload, text)``: the re-run body (`enforced_str`, `stream` false, no
  `stream_options`; seed, logprobs and max_tokens kept);
* ``logprob_list(...)``: every `choices[*].logprobs.content` entry, concatenated (over all chunks of a stream);
* ``compare_logits(original, validation)``: the chain node's `compareLogits`;
* ``response_hash(body)``: sha256hex of the concatenated `choices[].message.content` (§4.3).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ComparisonError",
    "compare_logits",
    "executor_text",
    "logprob_list",
    "position_distance",
    "response_bodies",
    "response_hash",
    "validation_request",
]

Entry = Mapping[str, Any]


class ComparisonError(ValueError):
    """The inputs cannot be validated (no text, no logprobs, unreadable payload): nothing is sent."""


def response_bodies(response_payload: str) -> list[dict[str, Any]]:
    """The JSON bodies of a stored answer: the one body, or each `data:` chunk of a streamed answer."""
    try:
        decoded = json.loads(response_payload)
    except ValueError as exc:
        raise ComparisonError(f"response payload is not JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise ComparisonError("response payload is not a JSON object")
    events = decoded.get("events")
    if isinstance(events, list) and "choices" not in decoded:
        chunks = []
        for line in events:
            if isinstance(line, str) and line.startswith("data: ") and line != "data: [DONE]":
                try:
                    chunk = json.loads(line[len("data: "):])
                except ValueError:
                    continue
                if isinstance(chunk, dict):
                    chunks.append(chunk)
        return chunks
    return [decoded]


def _is_stream(bodies: Sequence[Mapping[str, Any]]) -> bool:
    return any(isinstance(c, Mapping) and "delta" in c for b in bodies for c in (b.get("choices") or []))


def executor_text(response_payload: str) -> str:
    """§4.2 step 3: non-stream `choices[0].message.content`, stream the concatenated `choices[0].delta.content`."""
    bodies = response_bodies(response_payload)
    parts: list[str] = []
    if _is_stream(bodies):
        for chunk in bodies:
            choices = chunk.get("choices") or []
            if choices:
                parts.append(str((choices[0].get("delta") or {}).get("content") or ""))
    elif bodies:
        choices = bodies[0].get("choices") or []
        if choices:
            parts.append(str((choices[0].get("message") or {}).get("content") or ""))
    text = "".join(parts)
    if not text:
        raise ComparisonError("the executor's answer has no text")
    return text


def validation_request(prompt_payload: str, text: str) -> dict[str, Any]:
    """§4.2 step 3: the stored prompt payload forced along the executor's text, not streamed."""
    try:
        request = json.loads(prompt_payload)
    except ValueError as exc:
        raise ComparisonError(f"prompt payload is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ComparisonError("prompt payload is not a JSON object")
    request["enforced_str"] = text
    request["stream"] = False
    request.pop("stream_options", None)
    return request


def logprob_list(bodies: Sequence[Mapping[str, Any]]) -> list[Entry]:
    """§4.2 step 4: all `choices[*].logprobs.content` entries of the bodies, in order."""
    out: list[Entry] = []
    for body in bodies:
        for choice in body.get("choices") or []:
            logprobs = choice.get("logprobs") or {}
            out.extend(logprobs.get("content") or [])
    return out


def position_distance(original_top: Sequence[Entry], validation_top: Sequence[Entry]) -> float:
    """`positionDistance`: how far one position's top logprobs moved; a token missing from the original's
    top is given a logprob extrapolated below its two smallest."""
    if not original_top or not validation_top:
        raise ComparisonError("empty top logprobs")
    original = {str(e["token"]): float(e["logprob"]) for e in original_top}  # the last of a token wins
    ordered = sorted(original.values())
    smallest = ordered[0]
    second = ordered[1] if len(ordered) > 1 else smallest - 100.0
    fill = smallest - (second - smallest)
    total = 0.0
    for entry in validation_top:
        v_lp = float(entry["logprob"])
        o_lp = original.get(str(entry["token"]), fill)
        total += abs(v_lp - o_lp) / (1e-6 + abs(v_lp) + abs(o_lp)) / 2
    return total


def compare_logits(original: Sequence[Entry], validation: Sequence[Entry]) -> float:
    """`compareLogits`: the similarity in [0, 1] of two logprob lists of the same text.

    Lists of different lengths, or with a different token at some position, report 1.0 (the reference
    passes them). Empty top logprobs at a position, or a non-finite distance, give 0.
    """
    if len(original) != len(validation):
        return 1.0
    if any(o.get("token") != v.get("token") for o, v in zip(original, validation, strict=True)):
        return 1.0
    if not original:
        return 1.0
    try:
        distance = sum(position_distance(o.get("top_logprobs") or [], v.get("top_logprobs") or [])
                       for o, v in zip(original, validation, strict=True))
    except ComparisonError:
        return 0.0
    total = max(100, len(original))
    width = len(original[0].get("top_logprobs") or [])
    if width > 0:
        total *= width
    distance /= total
    if math.isnan(distance) or math.isinf(distance):
        return 0.0
    return max(0.0, 1.0 - distance)


def response_hash(body: Mapping[str, Any]) -> str:
    """§4.3 `GetResponseHash`: sha256hex of the concatenated `choices[].message.content` of the re-run's body."""
    text = "".join(str((c.get("message") or {}).get("content") or "") for c in body.get("choices") or [])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
