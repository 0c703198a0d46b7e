"""Errors of talking to a chain node, grouped by what the caller can do about them."""

from __future__ import annotations


class ChainError(Exception):
    """Something went wrong talking to the chain node."""


class ChainUnavailable(ChainError):
    """The node could not be reached or answered with a transient failure: retry with backoff."""


class ChainNotFound(ChainError):
    """The node answered that the thing asked for does not exist (yet)."""


class ChainBadResponse(ChainError):
    """The node answered something we cannot decode: retrying the same call will not help."""


class ChainRejected(ChainError):
    """The node answered the query with an application error code (not a not-found)."""

    def __init__(self, message: str, *, code: int, log: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.log = log
