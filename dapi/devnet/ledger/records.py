"""Plain records of the ledger: accounts, CheckTx answers, included txs, blocks, claims, epoch reports.

Also the height-versioned store (`History`) behind the state that clients may query "at a height",
and the two formatting helpers the wire servers share (`rfc3339`, `valid_address`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

import bech32

from dapi.chain.epochs import EndBlockStage
from dapi.chain.keys import ADDRESS_PREFIX
from dapi.devnet.schedule.throughput import ThroughputShortfall

__all__ = [
    "Account",
    "Block",
    "CheckTxResult",
    "ClaimRecord",
    "EpochReport",
    "History",
    "MemberReport",
    "NodeReport",
    "TxEvent",
    "TxRecord",
    "rfc3339",
    "valid_address",
]


def rfc3339(ns: int) -> str:
    """Go's RFC3339Nano in UTC (trailing zeros of the fraction dropped), as CometBFT prints block times."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


def valid_address(address: str) -> bool:
    """A bech32 gonka account address (20 bytes)."""
    hrp, data = bech32.bech32_decode(address)
    if hrp != ADDRESS_PREFIX or data is None:
        return False
    raw = bech32.convertbits(data, 5, 8, False)
    return raw is not None and len(raw) == 20


# --- records of what happened ---------------------------------------------------------------------


@dataclass(slots=True)
class Account:
    """An x/auth base account: address, public key, account number and sequence."""

    address: str
    public_key: bytes
    account_number: int
    sequence: int = 0
    # The sequence CheckTx expects next: ahead of `sequence` by the ordered txs still in the mempool.
    check_sequence: int = 0


@dataclass(frozen=True, slots=True)
class CheckTxResult:
    """CheckTx's answer to one tx: code 0 admits it to the mempool."""

    code: int
    log: str
    codespace: str
    hash: str

    @property
    def ok(self) -> bool:
        return self.code == 0


@dataclass(frozen=True, slots=True)
class TxEvent:
    """An ABCI event of a delivered tx (type and key/value attributes)."""

    type: str
    attributes: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class TxRecord:
    """A tx included in a block, with its DeliverTx result."""

    hash: str
    height: int
    index: int
    raw: bytes
    code: int
    log: str
    codespace: str
    data: bytes  # TxMsgData bytes on success
    gas_wanted: int
    gas_used: int
    timestamp: str
    events: tuple[TxEvent, ...]
    signer: str
    message_types: tuple[str, ...]  # effective messages (MsgExec unwrapped)

    @property
    def ok(self) -> bool:
        return self.code == 0


@dataclass(frozen=True, slots=True)
class Block:
    """A committed block: header facts, its txs' results and the EndBlock stages that ran."""

    height: int
    hash: str  # uppercase hex
    time_ns: int
    prev_hash: str
    app_hash: str
    txs: tuple[TxRecord, ...]
    stages: tuple[EndBlockStage, ...]  # the EndBlock stage actions that ran
    events: tuple[TxEvent, ...] = ()  # what EndBlock emitted besides the stages

    @property
    def time(self) -> str:
        return rfc3339(self.time_ns)


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    """A successful MsgClaimRewards: who claimed which epoch, with which seed, for how much."""

    participant: str
    epoch_index: int
    seed: int
    amount: int
    height: int


@dataclass(frozen=True, slots=True)
class InferenceStat:
    """One inference in the developer statistics: when (block time, ms), which model, how many tokens.

    The chain keys these by block time in milliseconds (`BlockTime().UnixMilli()`), end time or else
    start time, and counts prompt + completion tokens.
    """

    time_ms: int
    model: str
    tokens: int


@dataclass(frozen=True, slots=True)
class NodeReport:
    """One ML node of a formed epoch member: its model, PoC weight, POC_SLOT flag and throughput."""

    node_id: str
    model_id: str  # "" for the overflow list (no governance model)
    poc_weight: int
    poc_slot: bool  # keeps serving inference during the next PoC
    throughput: int


@dataclass(frozen=True, slots=True)
class MemberReport:
    """One member of a formed epoch: weight, models, nodes and (once settled) its reward."""

    address: str
    name: str
    weight: int
    models: tuple[str, ...]
    nodes: tuple[NodeReport, ...]
    reward: int | None = None  # filled in when the epoch is settled
    full_coverage: bool | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "address": self.address,
            "name": self.name,
            "weight": self.weight,
            "models": list(self.models),
            "nodes": [
                {"node_id": n.node_id, "model_id": n.model_id, "poc_weight": n.poc_weight, "poc_slot": n.poc_slot,
                 "throughput": n.throughput}
                for n in self.nodes
            ],
            "reward": self.reward,
            "full_coverage": self.full_coverage,
        }


@dataclass(frozen=True, slots=True)
class EpochReport:
    """One formed epoch: members, weights, allocations and (once settled) rewards."""

    epoch_index: int
    poc_start_block_height: int
    formed_at_height: int
    effective_at_height: int | None
    total_weight: int
    sub_group_models: tuple[str, ...]
    unit_of_compute_price: int
    members: tuple[MemberReport, ...]
    epoch_reward: int | None = None
    settled_at_height: int | None = None
    # DESIGN.md §6.1: the policy that chose the POC_SLOT flags, the throughput vectors (indexed like
    # sub_group_models; real is measured at the pre-PoC block, empty until then) and the models whose
    # demand exceeded what kept serving. Under `demand` the members' flags are the re-selected ones.
    poc_slot_policy: str = ""
    expected_throughput_vector: tuple[int, ...] = ()
    real_throughput_vector: tuple[int, ...] = ()
    throughput_shortfalls: tuple[ThroughputShortfall, ...] = ()
    pre_poc_selection_height: int | None = None

    def member(self, name_or_address: str) -> MemberReport | None:
        return next((m for m in self.members if name_or_address in (m.name, m.address)), None)

    def as_json(self) -> dict[str, object]:
        return {
            "epoch_index": self.epoch_index,
            "poc_start_block_height": self.poc_start_block_height,
            "formed_at_height": self.formed_at_height,
            "effective_at_height": self.effective_at_height,
            "total_weight": self.total_weight,
            "sub_group_models": list(self.sub_group_models),
            "unit_of_compute_price": self.unit_of_compute_price,
            "epoch_reward": self.epoch_reward,
            "settled_at_height": self.settled_at_height,
            "poc_slot_policy": self.poc_slot_policy,
            "expected_throughput_vector": list(self.expected_throughput_vector),
            "real_throughput_vector": list(self.real_throughput_vector),
            "throughput_shortfalls": [s.as_json() for s in self.throughput_shortfalls],
            "pre_poc_selection_height": self.pre_poc_selection_height,
            "members": [m.as_json() for m in self.members],
        }


# --- height-versioned store -----------------------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")


class History(Generic[K, V]):
    """Values by key with the height each was written at, so a read can be "as of the end of block h"."""

    def __init__(self) -> None:
        self._data: dict[K, tuple[list[int], list[V]]] = {}

    def set(self, key: K, value: V, height: int) -> None:
        heights, values = self._data.setdefault(key, ([], []))
        if heights and heights[-1] == height:
            values[-1] = value
        else:
            heights.append(height)
            values.append(value)

    def get(self, key: K, height: int | None = None) -> V | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        heights, values = entry
        if height is None:
            return values[-1]
        index = bisect.bisect_right(heights, height) - 1
        return values[index] if index >= 0 else None

    def keys(self) -> Iterable[K]:
        return self._data.keys()

    def copy(self) -> History[K, V]:
        """An independent copy (the values themselves are shared: they are immutable records)."""
        out: History[K, V] = History()
        out._data = {k: (list(heights), list(values)) for k, (heights, values) in self._data.items()}
        return out
