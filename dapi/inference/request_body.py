"""The executor's body modification and Go's JSON encoding of it (reference/inference.md §5.1-§5.3).

The reference decodes a request body into `map[string]interface{}` (numbers become float64), changes a
few keys (`modify_request_body`) and re-encodes it with `json.Marshal`: keys sorted at every level,
compact, `<` `>` `&` escaped (`go_marshal`); `CanonicalizeJSON` does the same without the HTML escapes
and ends in a newline (`prompt_payload`). The TA and the executor apply the same function to the same
original bytes and seed, so both get identical bytes. Pure functions, shared by the daemon and the devnet.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from decimal import Decimal
from typing import Any

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "TOP_LOGPROBS",
    "RequestBodyError",
    "decode_go",
    "go_float",
    "go_marshal",
    "modify_request_body",
    "prompt_hash",
    "prompt_payload",
]

DEFAULT_MAX_TOKENS = 5000
TOP_LOGPROBS = 5


class RequestBodyError(ValueError):
    """A body the reference cannot modify: not a JSON object, or a case where its handler panics."""


def go_float(value: float) -> str:
    """A float64 as Go's encoding/json writes it (shortest round-trip digits, §5.2)."""
    if math.isnan(value) or math.isinf(value):
        raise RequestBodyError(f"unsupported value: {value}")
    magnitude = abs(value)
    if magnitude and (magnitude < 1e-6 or magnitude >= 1e21):
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        sign = exponent[0] if exponent[0] in "+-" else "+"
        digits = exponent.lstrip("+-").lstrip("0") or "0"
        return f"{mantissa.removesuffix('.0')}e{sign}{digits}"
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}


def _escape_table(escape_html: bool) -> dict[int, str]:
    table = {code: f"\\u{code:04x}" for code in (*range(0x20), 0x2028, 0x2029)}
    table |= {ord(char): escape for char, escape in _SHORT_ESCAPES.items()}
    if escape_html:
        table |= {ord(char): escape for char, escape in _HTML_ESCAPES.items()}
    # A lone surrogate is not valid UTF-8: Go writes U+FFFD.
    table |= {code: "\ufffd" for code in range(0xD800, 0xE000)}
    return table


# str.translate and a regex run in C: the executor encodes every chunk of every stream with this, and a
# per-character Python loop was most of its CPU time (benchmarks/inference.py).
_TABLES = {True: _escape_table(True), False: _escape_table(False)}
_NEEDS_ESCAPE = {
    True: re.compile('[\\x00-\\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]'),
    False: re.compile('[\\x00-\\x1f"\\\\\u2028\u2029\ud800-\udfff]'),
}


def _go_string(text: str, escape_html: bool) -> str:
    if _NEEDS_ESCAPE[escape_html].search(text) is None:
        return '"' + text + '"'
    return '"' + text.translate(_TABLES[escape_html]) + '"'


def _encode(value: Any, escape_html: bool) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return _go_string(value, escape_html)
    if isinstance(value, list):
        return "[" + ",".join(_encode(v, escape_html) for v in value) + "]"
    if isinstance(value, dict):
        # Go sorts map keys bytewise; UTF-8 byte order is code point order.
        items = sorted(value.items(), key=lambda kv: kv[0])
        return "{" + ",".join(f"{_go_string(k, escape_html)}:{_encode(v, escape_html)}" for k, v in items) + "}"
    raise RequestBodyError(f"unsupported JSON value of type {type(value).__name__}")


def go_marshal(value: Any, *, escape_html: bool = True) -> bytes:
    """`json.Marshal` (escape_html=True) or an encoder with `SetEscapeHTML(false)`, without its newline."""
    return _encode(value, escape_html).encode("utf-8")


def decode_go(raw: bytes) -> Any:
    """JSON decoded as Go decodes into interface{}: every number a float64, invalid UTF-8 as U+FFFD."""
    return json.loads(raw.decode("utf-8", errors="replace"), parse_int=float, parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    raise RequestBodyError(f"invalid JSON value {name}")


def _is_number(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool)


def modify_request_body(raw: bytes, seed: int) -> dict[str, Any]:
    """`ModifyRequestBody(raw, seed)` (§5.1) as a map; encode it with `go_marshal` to send it."""
    try:
        body = decode_go(raw)
    except ValueError as exc:
        raise RequestBodyError(f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise RequestBodyError("the body is not a JSON object")
    if body.get("logprobs") in (None, False):
        body["logprobs"] = True
    body["top_logprobs"] = TOP_LOGPROBS
    if _is_number(body.get("max_tokens")):
        max_tokens = int(body["max_tokens"])
    elif _is_number(body.get("max_completion_tokens")):
        max_tokens = int(body["max_completion_tokens"])
    else:
        max_tokens = DEFAULT_MAX_TOKENS
    body["max_tokens"] = body["max_completion_tokens"] = max_tokens
    if "seed" not in body:
        body["seed"] = seed
    if "stream" in body:
        stream = body["stream"]
        if not isinstance(stream, bool):
            raise RequestBodyError("stream is not a boolean")  # the reference's handler panics
        if stream:
            options = body.setdefault("stream_options", {})
            if not isinstance(options, dict):
                raise RequestBodyError("stream_options is not an object")  # a panic too
            options["include_usage"] = True
    return body


def prompt_payload(modified: dict[str, Any]) -> str:
    """`CanonicalizeJSON(modified body)`: sorted, HTML not escaped, ending in a newline (§5.3)."""
    return go_marshal(modified, escape_html=False).decode("utf-8") + "\n"


def prompt_hash(payload: str) -> str:
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
