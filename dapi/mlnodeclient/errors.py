"""Errors of the ML node client, grouped by what the caller can do about them.

MLNodeError                      every failure of a call; `retriable` says whether repeating it may help
├── MLNodeUnavailable            no answer: refused, reset, closed without a response (retriable)
│   └── MLNodeTimeout            no answer in time (retriable)
├── MLNodeHTTPError(status, body)  the node answered with a non-2xx status (5xx retriable)
│   └── MLNodeConflict           409: another service (POW/INFERENCE/TRAIN) runs; stop the node first
├── MLNodeCommandFailed          2xx but the node says it failed (inference/up `{"status": "ERROR"}`)
└── MLNodeBadResponse            2xx with a body that is not the documented shape
"""

from __future__ import annotations

import json

# Keep error messages (which end up in logs and in the admin API's failure reason) short.
_BODY_LIMIT = 500


class MLNodeError(Exception):
    """A call to an ML node failed; `call` names the client method, `url` the URL it requested."""

    retriable: bool = False

    def __init__(self, message: str, *, call: str = "", url: str = "") -> None:
        self.call = call
        self.url = url
        self.message = message
        super().__init__(f"{call} {url}: {message}" if call or url else message)


class MLNodeUnavailable(MLNodeError):
    """The node could not be reached or dropped the connection without answering."""

    retriable = True


class MLNodeTimeout(MLNodeUnavailable):
    """The node did not answer within the call's timeout."""


class MLNodeHTTPError(MLNodeError):
    """The node answered with a non-2xx status; `body` is the (truncated) response text."""

    def __init__(self, status: int, body: str, *, call: str = "", url: str = "") -> None:
        self.status = status
        self.body = body[:_BODY_LIMIT]
        # A 5xx is the node's own trouble and may pass; a 4xx means our request is wrong for its state.
        self.retriable = status >= 500
        super().__init__(f"HTTP {status}: {_detail(self.body)}", call=call, url=url)


class MLNodeConflict(MLNodeHTTPError):
    """409: the node runs a different service than the one called; stop it before switching."""


class MLNodeCommandFailed(MLNodeError):
    """The node accepted the call (2xx) but reports that the command failed."""


class MLNodeBadResponse(MLNodeError):
    """A 2xx answer whose body is not what the protocol says (not JSON, missing keys, wrong types)."""


def _detail(body: str) -> str:
    """The human part of an error body: FastAPI's `detail`, our `error`, else the raw text."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if isinstance(parsed, dict):
        for key in ("detail", "error", "message"):
            if key in parsed:
                value = parsed[key]
                return value if isinstance(value, str) else json.dumps(value)
    return body
