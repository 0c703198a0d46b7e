"""Raw reads of the chain's `inference` store over CometBFT's ABCI query (no gRPC method exists for them).

`ActiveParticipants` of an epoch is what the reference's `/v1/epochs/{n}/participants` serves
(reference/inference.md §3.3): key `"ActiveParticipants/value/" ‖ BE64(epoch) ‖ "/"`, path
`/store/inference/key`, the value the protobuf `ActiveParticipants`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from dapi.chain.errors import ChainBadResponse, ChainNotFound, ChainRejected
from dapi.gen.inference.inference.activeparticipants_pb2 import ActiveParticipants

if TYPE_CHECKING:  # only the parameter's type: the keys below are wire facts the devnet's store serves too
    from dapi.chain.rpc import CometRPC

__all__ = ["ACTIVE_PARTICIPANTS_PREFIX", "STORE_KEY_PATH", "StoredValue", "active_participants",
           "active_participants_key"]

STORE_KEY_PATH = "/store/inference/key"
ACTIVE_PARTICIPANTS_PREFIX = b"ActiveParticipants/value/"


def active_participants_key(epoch_index: int) -> bytes:
    """The chain's `ActiveParticipantsFullKey(epoch)`."""
    return ACTIVE_PARTICIPANTS_PREFIX + epoch_index.to_bytes(8, "big") + b"/"


@dataclass(frozen=True, slots=True)
class StoredValue:
    """A decoded store value, its raw bytes (what a proof would cover) and the height it was read at."""

    value: ActiveParticipants
    raw: bytes
    height: int


async def active_participants(rpc: CometRPC, epoch_index: int, height: int = 0) -> StoredValue:
    """The stored ActiveParticipants of `epoch_index`; ChainNotFound when the store has none."""
    result = await rpc.abci_query(STORE_KEY_PATH, active_participants_key(epoch_index), height)
    if result.code != 0:
        raise ChainRejected(f"store query for the participants of epoch {epoch_index}: {result.log}",
                            code=result.code, log=result.log)
    if not result.value:
        raise ChainNotFound(f"no active participants stored for epoch {epoch_index}")
    try:
        value = ActiveParticipants.FromString(result.value)
    except DecodeError as exc:
        raise ChainBadResponse(f"active participants of epoch {epoch_index}: {exc}") from None
    return StoredValue(value, result.value, result.height)
