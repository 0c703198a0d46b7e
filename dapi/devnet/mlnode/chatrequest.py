"""A chat request as vLLM reads it, and the JSON of its answer: pure functions, used by `vllm`.

`parse_chat` makes the checks of steps 2-4 in `vllm`'s docstring (types, model, vLLM's own rules), giving
a `ChatJob` or the error response; `ChatJob.answered` runs the simulated model (the choices, not yet paced).
`completion_json` is the non-streamed answer in the key order of vLLM's (reference/inference.md §5.4).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dapi.devnet.mlnode.inference import (
    MAX_MODEL_LEN,
    MAX_TOP_LOGPROBS,
    Completion,
    Step,
    enforce,
    generate,
    prompt_tokens,
)

MAX_CHOICES = 16  # `n` above this is refused (vLLM has no such bound; the sim's own guard)


# --- the request, as vLLM's ChatCompletionRequest types it ----------------------------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")  # vLLM ignores fields it does not know


class ContentPart(_Lenient):
    """One part of a message's content; only text parts are served by the simulated model."""

    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    """A chat message: a role and a text, a list of parts, or no content (a tool-call message)."""

    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(_Lenient):
    """`stream_options`: `include_usage` asks for the final usage chunk."""

    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class ChatCompletionRequest(_Lenient):
    """The fields of a chat request the simulated vLLM reads (pydantic's lax types, as vLLM's)."""

    model: str | None = None
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int = 1
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    temperature: float | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = 0
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    enforced_str: str | None = None


class TokenizeRequest(_Lenient):
    """`/tokenize`: a `prompt` (the completion form) or `messages` (the chat form)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None


@dataclass(frozen=True, slots=True)
class ChatJob:
    """A valid chat request: what to run on the simulated model, and once `answered()`, its choices."""

    model: str
    messages: list[dict[str, Any]]
    prompt_tokens: int
    max_tokens: int
    n: int
    seed: int
    temperature: float
    ignore_eos: bool
    enforced_str: str | None
    honest: bool
    stream: bool
    include_usage: bool
    top_logprobs: int | None  # None: no logprobs asked
    choices: tuple[Completion, ...] = ()

    def answered(self) -> ChatJob:
        """The job with its choices made (CPU work: a few tens of microseconds per token)."""
        if self.enforced_str is not None:
            forced = enforce(
                self.model, self.messages, self.enforced_str, max_tokens=self.max_tokens, honest=self.honest
            )
            return replace(self, choices=(forced,) * self.n)
        choices = tuple(
            generate(
                self.model,
                self.messages,
                seed=self.seed,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                ignore_eos=self.ignore_eos,
                choice=j,
                honest=self.honest,
            )
            for j in range(self.n)
        )
        return replace(self, choices=choices)

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "completion_tokens": self.completion_tokens,
        }

    def logprobs(self, steps: Sequence[Step]) -> dict[str, Any] | None:
        if self.top_logprobs is None:
            return None
        return {"content": [s.logprobs_json(self.top_logprobs) for s in steps]}


def error_response(status: int, message: str, kind: str) -> JSONResponse:
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return JSONResponse(body, status_code=status)


def bad_request(message: str) -> JSONResponse:
    return error_response(400, message, "BadRequestError")


def model_not_found(model: str) -> JSONResponse:
    return error_response(404, f"The model `{model}` does not exist.", "NotFoundError")


# --- parsing -------------------------------------------------------------------------------------


def parse_chat(raw: bytes, served: str, *, honest: bool) -> ChatJob | JSONResponse:
    """The job of a chat request to a node serving `served` (a wrong model unless `honest`), or its 4xx.

    Only checks; the model runs in `ChatJob.answered`, once the request has a slot.
    """
    try:
        body = json.loads(raw)
    except ValueError as exc:
        return bad_request(f"the body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return bad_request("the body must be a JSON object")
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        return bad_request(str(exc))
    if req.model is not None and req.model != served:
        return model_not_found(req.model)
    for message in req.messages:
        if isinstance(message.content, list) and any(p.type != "text" for p in message.content):
            return bad_request("only text content parts are supported by this model")
    messages: list[dict[str, Any]] = body["messages"]  # as sent: the output is a function of them
    n_prompt = len(prompt_tokens(messages))
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is None:
        max_tokens = MAX_MODEL_LEN - n_prompt
    top = req.top_logprobs
    problem = _broken_rule(req, max_tokens)
    if problem is None and n_prompt + max_tokens > MAX_MODEL_LEN:
        problem = (
            f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested "
            f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the completion). "
            "Please reduce the length of the messages or completion."
        )
    if problem is not None:
        return bad_request(problem)
    return ChatJob(
        model=served,
        messages=messages,
        prompt_tokens=n_prompt,
        max_tokens=max_tokens,
        n=req.n,
        seed=req.seed if req.seed is not None else secrets.randbits(63),  # no seed: random, as vLLM
        temperature=req.temperature if req.temperature is not None else 1.0,
        ignore_eos=req.ignore_eos,
        enforced_str=req.enforced_str,
        # A validation re-run (`enforced_str`) stays honest on a node serving wrong output: the devnet
        # settles a failed validation at once instead of putting it to the chain's vote, so a wrong
        # validator would invalidate honest executors the vote would have cleared.
        honest=honest or req.enforced_str is not None,
        stream=bool(req.stream),
        include_usage=bool(req.stream and req.stream_options and req.stream_options.include_usage),
        top_logprobs=(top or 0) if req.logprobs else None,
    )


def _broken_rule(req: ChatCompletionRequest, max_tokens: int) -> str | None:
    """vLLM's message for the first of its request rules `req` breaks (the context length aside)."""
    top = req.top_logprobs
    if not 1 <= req.n <= MAX_CHOICES:
        return f"n must be between 1 and {MAX_CHOICES}, got {req.n}."
    if max_tokens < 1:
        return f"max_tokens must be at least 1, got {max_tokens}."
    if req.temperature is not None and req.temperature < 0:
        return f"temperature must be non-negative, got {req.temperature}."
    if top is not None and top < 0:
        return "`top_logprobs` must be a positive value."
    if top is not None and top > MAX_TOP_LOGPROBS:
        return f"Requested top logprobs of {top} exceeds the maximum of {MAX_TOP_LOGPROBS}."
    if top and not req.logprobs:
        return "when using `top_logprobs`, `logprobs` must be set to true."
    if req.stream_options and not req.stream:
        return "Stream options can only be defined when `stream=True`."
    return None


def completion_json(job: ChatJob, completion_id: str, created: int) -> dict[str, Any]:
    """The non-streamed answer, keys in vLLM's order."""
    choices: list[dict[str, Any]] = [
        {
            "index": j,
            "message": {"role": "assistant", "reasoning_content": None, "content": c.text, "tool_calls": []},
            "logprobs": job.logprobs(c.steps),
            "finish_reason": c.finish_reason,
            "stop_reason": None,
        }
        for j, c in enumerate(job.choices)
    ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": job.model,
        "choices": choices,
        "usage": {**job.usage(), "prompt_tokens_details": None},
        "prompt_logprobs": None,
    }
