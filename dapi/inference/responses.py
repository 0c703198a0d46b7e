"""What the executor does with an ML node's answer (reference/inference.md §5.4-§5.5): the bytes the client
gets and the values MsgFinishInference carries.

* A JSON answer has its ``"id"`` replaced by the inference id and is re-encoded as Go's ``json.Marshal``
  does (`rewrite_json`); the client gets exactly the `response_payload`.
* A stream is rewritten line by line (`StreamRewriter.line`): each ``data: {...}`` chunk gets the id,
  every other line (blank, ``data: [DONE]``) passes through; the payload is ``{"events": [every line]}``.
* `FinishValues`: ``response_hash`` = sha256hex of the concatenated content, the usage (a stream's first
  non-zero usage chunk, else the number of logprob entries as completion tokens), the served model.
  An empty answer or zero usage gives no Finish, as in the reference (`FinishValues.problem` says why).

Pure, and shared by the daemon's executor and the devnet's simulated peers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from dapi.inference.request_body import RequestBodyError, decode_go, go_marshal

__all__ = ["DONE_LINE", "FinishValues", "StreamRewriter", "rewrite_json"]

DONE_LINE = "data: [DONE]"
_DATA = "data: "


@dataclass(frozen=True, slots=True)
class FinishValues:
    """The answer-derived fields of MsgFinishInference; `problem` is set when none may be sent."""

    response_hash: str
    response_payload: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    problem: str = ""


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def rewrite_json(body: bytes, inference_id: str) -> tuple[bytes, FinishValues]:
    """A non-streamed answer with its id replaced (the exact bytes to send) and its Finish values.

    Raises RequestBodyError when the body is not a JSON object (the reference answers 500 then).
    """
    try:
        answer = decode_go(body)
    except ValueError as exc:
        raise RequestBodyError(f"ML node answer is not JSON: {exc}") from None
    if not isinstance(answer, dict):
        raise RequestBodyError("ML node answer is not a JSON object")
    answer["id"] = inference_id
    payload = go_marshal(answer)
    choices = _list(answer.get("choices"))
    content = "".join(str((c.get("message") or {}).get("content") or "") for c in choices if isinstance(c, dict))
    usage = _dict(answer.get("usage"))
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    problem = ""
    if not content:
        problem = "the answer has no content"
    elif not (prompt or completion):
        problem = "the answer reports no usage"
    values = FinishValues(_hash(content), payload.decode("utf-8"), prompt, completion,
                          str(answer.get("model") or ""), problem)
    return payload, values


@dataclass
class StreamRewriter:
    """Rewrites an SSE answer line by line and collects what MsgFinishInference needs."""

    inference_id: str
    events: list[str] = field(default_factory=list)
    _content: list[str] = field(default_factory=list)
    _usage: tuple[int, int] | None = None
    _logprobs: int = 0
    _model: str = ""

    def line(self, line: str) -> str:
        """The line to send instead of `line` (without its newline)."""
        if line.startswith(_DATA) and line != DONE_LINE:
            try:
                chunk = decode_go(line[len(_DATA):].encode("utf-8"))
            except ValueError:
                chunk = None
            if isinstance(chunk, dict):
                chunk["id"] = self.inference_id
                line = _DATA + go_marshal(chunk).decode("utf-8")
                self._collect(chunk)
        self.events.append(line)
        return line

    def _collect(self, chunk: dict[str, Any]) -> None:
        self._model = self._model or str(chunk.get("model") or "")
        choices = _list(chunk.get("choices"))
        for index, choice in enumerate(choices):
            if not isinstance(choice, dict):
                continue
            self._content.append(str((choice.get("delta") or {}).get("content") or ""))
            logprobs = choice.get("logprobs")
            if index == 0 and isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
                self._logprobs += len(logprobs["content"])
        usage = chunk.get("usage")
        if self._usage is None and isinstance(usage, dict):
            found = (_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))
            if any(found):
                self._usage = found

    @property
    def prompt_tokens(self) -> int:
        return self._usage[0] if self._usage else 0

    def finish_values(self, prompt_tokens: int | None = None) -> FinishValues:
        """The Finish values once the stream ended; `prompt_tokens` overrides a zero count (`/tokenize`)."""
        content = "".join(self._content)
        prompt, completion = self._usage if self._usage else (0, self._logprobs)
        if not prompt and prompt_tokens:
            prompt = prompt_tokens
        payload = go_marshal({"events": self.events}).decode("utf-8")
        problem = "" if content else "the answer has no content"
        return FinishValues(_hash(content), payload, prompt, completion, self._model, problem)
