"""Chain messages as the reference daemon's JSON shows them (reference/http.md §0.2).

The reference encodes gogoproto structs with Go's encoding/json: zero, empty and false fields are
omitted, 64-bit integers and enums stay JSON numbers (not protojson strings), bytes are base64, and
fields come in field-number order, which is exactly what ``ListFields`` yields for proto3 messages.
"""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def _value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return go_json(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


def go_json(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        out[field.name] = [_value(field, v) for v in value] if field.is_repeated else _value(field, value)
    return out
