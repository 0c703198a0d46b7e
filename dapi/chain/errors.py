"""Errors of talking to a chain node, grouped by what the caller can do about them."""

from __future__ import annotations

import re


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


class ChainHeightPruned(ChainError):
    """The node no longer keeps that height (its blocks or its state were pruned): retrying will not help.

    ``height`` is the height asked for, ``lowest`` the lowest one the node still serves, when it said so
    (CometBFT's ``block`` does; a pruned state query does not).
    """

    def __init__(self, message: str, *, height: int | None = None, lowest: int | None = None) -> None:
        super().__init__(message)
        self.height = height
        self.lowest = lowest


# CometBFT 0.38, rpc/core getHeight: the block store's base is above the height asked for.
_BLOCK_PRUNED = re.compile(r"height (\d+) is not available, lowest height is (\d+)")
# Cosmos SDK baseapp, CreateQueryContext: the state of that version is gone (pruned).
_STATE_PRUNED = re.compile(r"failed to load state at height (\d+)")


def pruned_height_error(text: str, *, where: str = "") -> ChainHeightPruned | None:
    """A ChainHeightPruned if the chain's error text says the height was pruned, else None.

    ``where`` (the RPC method or query path) prefixes the message.
    """
    message = f"{where}: {text}" if where else text
    if match := _BLOCK_PRUNED.search(text):
        return ChainHeightPruned(message, height=int(match.group(1)), lowest=int(match.group(2)))
    if match := _STATE_PRUNED.search(text):
        return ChainHeightPruned(message, height=int(match.group(1)))
    return None
