"""The devnet chain: a state machine that behaves like the gonka chain towards its clients.

Blocks are made on demand (`make_block`; the runner calls it on a timer). A block first delivers the
mempool's txs in arrival order, applying each message's rules at that height, then runs the EndBlock
stages of reference/chain-logic.md §10 through the pure schedule logic of `dapi.devnet.schedule`:

- start of PoC (h = next PoC start): create Epoch{effective + 1, h} and its empty parent group;
- end of PoC validation: settle the ending epoch (coverage bonus), then form the upcoming one from the
  stage's batches and validations, the effective epoch's validators and allocations, seeds, hardware
  declarations and the governance registry (weights → assignment → 50% rule → groups with snapshots);
- set new validators: the upcoming epoch becomes effective.

Transactions are checked the way a Cosmos SDK 0.53 node checks them (DESIGN.md §6): `check_tx`
(CheckTx) rejects what no block could ever accept (undecodable bytes, bad signature, wrong chain id or
account number, missing authz grant, a message that fails its basic validity, a replayed or expired
unordered tx) with an "sdk" code; the message rules that depend on chain state and height (exchange
windows, start heights, governance models) run when the block is made, and a violation is the tx's
non-zero result code in that block, with codespace "inference".

Everything here is synchronous and runs on the event loop thread: callers never see a half-made block.
State that clients may query "at a height" (latest and effective epoch, epoch group data) keeps its
history, so a daemon replaying a missed block sees the epoch state of that block.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Generic, TypeVar

import bech32
from google.protobuf.message import Message

from dapi.chain.epochs import EndBlockStage, Epoch, EpochContext, end_block_stages
from dapi.chain.keys import ADDRESS_PREFIX, verify_signature
from dapi.chain.messages import pack_any, type_url_of
from dapi.chain.tx import DecodedTx, TxDecodeError, decode_tx, tx_hash, verify_tx_signature
from dapi.devnet.genesis import DevnetGenesis, Grant
from dapi.devnet.schedule.formation import FormationInput, form_epoch
from dapi.devnet.schedule.models import InvalidModelError, ModelRegistry, apply_hardware_diff
from dapi.devnet.schedule.records import (
    ActiveParticipant,
    EpochGroupData,
    HardwareNodes,
    Model,
    ParticipantRecord,
    PoCBatch,
    PoCValidation,
    RandomSeed,
    ValidationWeight,
)
from dapi.devnet.schedule.settlement import RewardShare, fixed_epoch_reward, settle_epoch_rewards
from dapi.devnet.wire.convert import hardware_node_from_proto
from dapi.gen.cosmos.authz.v1beta1.tx_pb2 import MsgExec, MsgExecResponse
from dapi.gen.cosmos.base.abci.v1beta1.abci_pb2 import TxMsgData
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.logs import get_logger

__all__ = [
    "CODESPACE_INFERENCE",
    "CODESPACE_SDK",
    "Account",
    "Block",
    "CheckTxResult",
    "ClaimRecord",
    "DevnetChain",
    "EpochReport",
    "InferenceCode",
    "MemberReport",
    "NodeReport",
    "SdkCode",
    "TxEvent",
    "TxRecord",
    "rfc3339",
    "valid_address",
]

log = get_logger(__name__)

CODESPACE_SDK = "sdk"
CODESPACE_INFERENCE = "inference"


class SdkCode:
    """Cosmos SDK error codes (codespace "sdk", types/errors/errors.go) the devnet answers with."""

    TX_DECODE = 2
    UNAUTHORIZED = 4
    UNKNOWN_REQUEST = 6
    INVALID_ADDRESS = 7
    INVALID_PUBKEY = 8
    UNKNOWN_ADDRESS = 9
    INVALID_REQUEST = 18
    TX_IN_MEMPOOL_CACHE = 19
    MEMPOOL_IS_FULL = 20
    TX_TOO_LARGE = 21
    TX_TIMEOUT_HEIGHT = 30
    WRONG_SEQUENCE = 32
    TX_TIMEOUT = 42


_SDK_TEXT = {
    SdkCode.TX_DECODE: "tx parse error",
    SdkCode.UNAUTHORIZED: "unauthorized",
    SdkCode.UNKNOWN_REQUEST: "unknown request",
    SdkCode.INVALID_ADDRESS: "invalid address",
    SdkCode.INVALID_PUBKEY: "invalid pubkey",
    SdkCode.UNKNOWN_ADDRESS: "unknown address",
    SdkCode.INVALID_REQUEST: "invalid request",
    SdkCode.TX_IN_MEMPOOL_CACHE: "tx already in mempool",
    SdkCode.MEMPOOL_IS_FULL: "mempool is full",
    SdkCode.TX_TOO_LARGE: "tx too large",
    SdkCode.TX_TIMEOUT_HEIGHT: "tx timeout height",
    SdkCode.WRONG_SEQUENCE: "incorrect account sequence",
    SdkCode.TX_TIMEOUT: "tx timeout",
}


class InferenceCode:
    """Result codes of the inference module's message rules (codespace "inference").

    1103/1107/1108/1116/1134 are the gonka chain's own numbers; the rest are the devnet's, for rules
    whose chain code is not pinned by the spec.
    """

    PARTICIPANT_NOT_FOUND = 1103
    POC_WRONG_START_BLOCK_HEIGHT = 1107
    POC_TOO_LATE = 1108
    CLAIM_SIGNATURE_INVALID = 1116
    INVALID_MODEL = InvalidModelError.code  # 1134
    UPCOMING_EPOCH_NOT_FOUND = 1150
    REWARDS_NOT_SETTLED = 1151
    REWARDS_ALREADY_CLAIMED = 1152


_INFERENCE_TEXT = {
    InferenceCode.PARTICIPANT_NOT_FOUND: "participant not found",
    InferenceCode.POC_WRONG_START_BLOCK_HEIGHT: "start block height mismatch",
    InferenceCode.POC_TOO_LATE: "POC submission is too late",
    InferenceCode.CLAIM_SIGNATURE_INVALID: "claim signature invalid",
    InferenceCode.UPCOMING_EPOCH_NOT_FOUND: "upcoming epoch not found",
    InferenceCode.REWARDS_NOT_SETTLED: "rewards not settled",
    InferenceCode.REWARDS_ALREADY_CLAIMED: "rewards already claimed",
}

# CometBFT's default max_tx_bytes; the SDK's unordered-tx TTL limit (10 minutes).
MAX_TX_BYTES = 1024 * 1024
MAX_MEMPOOL_TXS = 10_000
MAX_UNORDERED_TTL_NS = 600 * 1_000_000_000
FIRST_ACCOUNT_NUMBER = 10  # low numbers belong to module accounts on a real chain
GENESIS_REPUTATION = 1

_MSG_EXEC_URL = type_url_of(MsgExec)
_POC_BATCH_URL = type_url_of(itx.MsgSubmitPocBatch)
_POC_VALIDATION_URL = type_url_of(itx.MsgSubmitPocValidation)
_HARDWARE_DIFF_URL = type_url_of(itx.MsgSubmitHardwareDiff)
_SEED_URL = type_url_of(itx.MsgSubmitSeed)
_CLAIM_URL = type_url_of(itx.MsgClaimRewards)


class TxFailure(Exception):
    """A CheckTx or message failure: what the chain answers as (code, codespace, log)."""

    def __init__(self, code: int, codespace: str, detail: str) -> None:
        base = (_SDK_TEXT if codespace == CODESPACE_SDK else _INFERENCE_TEXT).get(code, "")
        text = f"{detail}: {base}" if base and base not in detail else detail
        super().__init__(text)
        self.code = code
        self.codespace = codespace
        self.log = text


def _sdk(code: int, detail: str) -> TxFailure:
    return TxFailure(code, CODESPACE_SDK, detail)


def _inference(code: int, detail: str) -> TxFailure:
    return TxFailure(code, CODESPACE_INFERENCE, detail)


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
    address: str
    public_key: bytes
    account_number: int
    sequence: int = 0
    # The sequence CheckTx expects next: ahead of `sequence` by the ordered txs still in the mempool.
    check_sequence: int = 0


@dataclass(frozen=True, slots=True)
class CheckTxResult:
    code: int
    log: str
    codespace: str
    hash: str

    @property
    def ok(self) -> bool:
        return self.code == 0


@dataclass(frozen=True, slots=True)
class TxEvent:
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
    height: int
    hash: str  # uppercase hex
    time_ns: int
    prev_hash: str
    app_hash: str
    txs: tuple[TxRecord, ...]
    stages: tuple[EndBlockStage, ...]  # the EndBlock stage actions that ran

    @property
    def time(self) -> str:
        return rfc3339(self.time_ns)


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    participant: str
    epoch_index: int
    seed: int
    amount: int
    height: int


@dataclass(frozen=True, slots=True)
class NodeReport:
    node_id: str
    model_id: str  # "" for the overflow list (no governance model)
    poc_weight: int
    poc_slot: bool  # keeps serving inference during the next PoC
    throughput: int


@dataclass(frozen=True, slots=True)
class MemberReport:
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
            "members": [m.as_json() for m in self.members],
        }


# --- internals ------------------------------------------------------------------------------------

K = TypeVar("K")
V = TypeVar("V")


class _History(Generic[K, V]):
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


@dataclass(slots=True)
class _Pending:
    raw: bytes
    hash: str
    tx: DecodedTx


@dataclass(slots=True)
class _Fault:
    remaining: int
    code: int
    codespace: str
    log: str


Effect = Callable[[], None]
_LATEST = "latest"
_EFFECTIVE = "effective"


class DevnetChain:
    """The chain's state and rules; no I/O. See the module docstring."""

    def __init__(self, genesis: DevnetGenesis, *, genesis_time_ns: int | None = None) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.params = genesis.epoch_params
        self.genesis_time_ns = genesis_time_ns if genesis_time_ns is not None else time.time_ns()
        self.registry = ModelRegistry.of(genesis.models)
        self.catching_up = False

        self.accounts: dict[str, Account] = {}
        self.grants: dict[tuple[str, str, str], Grant] = {}
        self.participants: dict[str, ParticipantRecord] = {}
        self.names: dict[str, str] = {}
        self.hardware: dict[str, HardwareNodes] = {}
        self.balances: dict[str, int] = {}
        self._participant_keys: dict[str, tuple[bytes, ...]] = {}

        self._epochs: dict[int, Epoch] = {0: Epoch(0, 0)}
        self._epoch_pointer: _History[str, int] = _History()
        self._groups: _History[tuple[int, str], EpochGroupData] = _History()
        self._active: dict[int, tuple[ActiveParticipant, ...]] = {0: ()}
        self._formation_inputs: dict[int, FormationInput] = {}
        self._reports: dict[int, EpochReport] = {}
        self._rewards: dict[int, dict[str, RewardShare]] = {}

        self._batches: dict[tuple[int, str, str], PoCBatch] = {}
        self._validations: dict[tuple[int, str, str], PoCValidation] = {}
        self._seeds: dict[tuple[int, str], RandomSeed] = {}
        self._claims: list[ClaimRecord] = []

        self.blocks: list[Block] = []
        self._tx_index: dict[str, TxRecord] = {}
        self._mempool: list[_Pending] = []
        self._mempool_hashes: set[str] = set()
        self._unordered_seen: dict[str, int] = {}  # hash -> timeout (ns); replay protection of unordered txs
        self._faults: deque[_Fault] = deque()
        self._group_ids = itertools.count(1)
        self.checktx_counts: dict[int, int] = {}  # CheckTx code -> how many answers (observability)

        self._init_genesis()

    # --- genesis -----------------------------------------------------------------------------------

    def _init_genesis(self) -> None:
        numbers = itertools.count(FIRST_ACCOUNT_NUMBER)
        for p in self.genesis.participants:
            for key in (p.account_key, p.signer_key):
                self.accounts[key.address] = Account(key.address, key.public_key, next(numbers))
            self.participants[p.address] = ParticipantRecord(
                address=p.address, validator_key=p.validator_key, inference_url=p.inference_url
            )
            self.names[p.address] = p.name
            self._participant_keys[p.address] = (p.account_key.public_key, p.signer_key.public_key)
        for grant in self.genesis.grants:
            self.grants[(grant.granter, grant.grantee, grant.msg_type_url)] = grant
        members = tuple(
            ValidationWeight(member_address=p.address, weight=p.genesis_weight, reputation=GENESIS_REPUTATION)
            for p in sorted(self.genesis.participants, key=lambda p: p.address)
        )
        self._groups.set((0, ""), EpochGroupData(
            poc_start_block_height=0,
            epoch_index=0,
            epoch_group_id=next(self._group_ids),
            validation_weights=members,
            total_weight=sum(m.weight for m in members),
            unit_of_compute_price=self.params.default_unit_of_compute_price,
        ), 0)
        self._epoch_pointer.set(_LATEST, 0, 0)
        self._epoch_pointer.set(_EFFECTIVE, 0, 0)

    # --- reads -------------------------------------------------------------------------------------

    @property
    def height(self) -> int:
        return len(self.blocks)

    @property
    def latest_block(self) -> Block | None:
        return self.blocks[-1] if self.blocks else None

    def block(self, height: int) -> Block | None:
        return self.blocks[height - 1] if 1 <= height <= len(self.blocks) else None

    def now_ns(self) -> int:
        """The chain's clock for CheckTx: the last block's time (the genesis time before block 1)."""
        return self.blocks[-1].time_ns if self.blocks else self.genesis_time_ns

    def latest_epoch(self, height: int | None = None) -> Epoch:
        """The chain's GetLatestEpoch: the upcoming epoch once its PoC started, else the effective one."""
        index = self._epoch_pointer.get(_LATEST, height)
        return self._epochs[index if index is not None else 0]

    def effective_epoch(self, height: int | None = None) -> Epoch:
        index = self._epoch_pointer.get(_EFFECTIVE, height)
        return self._epochs[index if index is not None else 0]

    def upcoming_epoch(self) -> Epoch | None:
        return self._epochs.get(self.effective_epoch().index + 1)

    def epoch(self, index: int) -> Epoch | None:
        return self._epochs.get(index)

    def epoch_group(self, epoch_index: int, model_id: str = "", height: int | None = None) -> EpochGroupData | None:
        return self._groups.get((epoch_index, model_id), height)

    def epoch_groups(self, epoch_index: int) -> tuple[EpochGroupData, tuple[EpochGroupData, ...]] | None:
        """The parent group of an epoch and its model sub-groups (in sub_group_models order)."""
        parent = self._groups.get((epoch_index, ""))
        if parent is None:
            return None
        subs = tuple(g for m in parent.sub_group_models if (g := self._groups.get((epoch_index, m))) is not None)
        return parent, subs

    def all_epoch_groups(self) -> list[EpochGroupData]:
        groups = [self._groups.get(key) for key in sorted(self._groups.keys())]
        return [g for g in groups if g is not None]

    def active_participants(self, epoch_index: int) -> tuple[ActiveParticipant, ...]:
        return self._active.get(epoch_index, ())

    def formation_input(self, epoch_index: int) -> FormationInput | None:
        """What formation of `epoch_index` read (kept as long as that stage's PoC data)."""
        return self._formation_inputs.get(epoch_index)

    def batches(self, stage: int | None = None, participant: str | None = None) -> list[PoCBatch]:
        return [
            b for (s, p, _), b in sorted(self._batches.items())
            if (stage is None or s == stage) and (participant is None or p == participant)
        ]

    def validations(self, stage: int | None = None, participant: str | None = None) -> list[PoCValidation]:
        return [
            v for (s, p, _), v in sorted(self._validations.items())
            if (stage is None or s == stage) and (participant is None or p == participant)
        ]

    def seeds(self, epoch_index: int | None = None) -> list[RandomSeed]:
        return [s for (e, _), s in sorted(self._seeds.items()) if epoch_index is None or e == epoch_index]

    def claims(self) -> list[ClaimRecord]:
        return list(self._claims)

    def rewards(self, epoch_index: int) -> dict[str, RewardShare] | None:
        shares = self._rewards.get(epoch_index)
        return dict(shares) if shares is not None else None

    def report(self, epoch_index: int) -> EpochReport | None:
        return self._reports.get(epoch_index)

    def reports(self) -> list[EpochReport]:
        return [self._reports[k] for k in sorted(self._reports)]

    def tx(self, hash_hex: str) -> TxRecord | None:
        return self._tx_index.get(hash_hex.upper())

    def account(self, address: str) -> Account | None:
        return self.accounts.get(address)

    def hardware_nodes(self, participant: str) -> HardwareNodes | None:
        return self.hardware.get(participant)

    @property
    def mempool_size(self) -> int:
        return len(self._mempool)

    def mempool_messages(self) -> list[Message]:
        """The messages waiting in the mempool (MsgExec unwrapped), in arrival order."""
        return [eff.message for pending in self._mempool for eff in pending.tx.effective_messages]

    # --- hooks -------------------------------------------------------------------------------------

    def set_governance_model(self, model: Model) -> None:
        """Upsert a governance model now (as a passed RegisterModel proposal); snapshots stay as formed."""
        self.registry = self.registry.register_model(model)

    def remove_governance_model(self, model_id: str) -> None:
        self.registry = self.registry.delete_governance_model(model_id)

    def inject_checktx_fault(
        self, count: int, *, code: int = SdkCode.MEMPOOL_IS_FULL, codespace: str = CODESPACE_SDK, log: str = ""
    ) -> None:
        """The next `count` externally submitted txs are answered (code, codespace, log) and dropped."""
        if count < 1 or code == 0:
            raise ValueError("a fault needs count >= 1 and a non-zero code")
        default = _SDK_TEXT.get(code, "") if codespace == CODESPACE_SDK else ""
        self._faults.append(_Fault(count, code, codespace, log or default or f"injected fault {code}"))

    def clear_checktx_faults(self) -> None:
        """Forget every injected fault not yet used up: the next txs are checked normally again."""
        self._faults.clear()

    # --- CheckTx -----------------------------------------------------------------------------------

    def check_tx(self, raw: bytes, *, external: bool = True) -> CheckTxResult:
        """Admit a tx to the mempool or say why not (never raises for bad input)."""
        hash_hex = tx_hash(raw)
        if external and self._faults:
            fault = self._faults[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.popleft()
            return self._answer(CheckTxResult(fault.code, fault.log, fault.codespace, hash_hex))
        try:
            pending = self._check(raw, hash_hex)
        except TxFailure as failure:
            return self._answer(CheckTxResult(failure.code, failure.log, failure.codespace, hash_hex))
        except Exception:  # a bug here must cost one tx, never the node
            log.exception("devnet CheckTx failed unexpectedly", tx=hash_hex)
            return self._answer(CheckTxResult(1, "internal error", CODESPACE_SDK, hash_hex))
        self._mempool.append(pending)
        self._mempool_hashes.add(hash_hex)
        if pending.tx.unordered and pending.tx.timeout_timestamp_ns is not None:
            self._unordered_seen[hash_hex] = pending.tx.timeout_timestamp_ns
        return self._answer(CheckTxResult(0, "", "", hash_hex))

    def _answer(self, result: CheckTxResult) -> CheckTxResult:
        self.checktx_counts[result.code] = self.checktx_counts.get(result.code, 0) + 1
        return result

    def _check(self, raw: bytes, hash_hex: str) -> _Pending:
        if len(raw) > MAX_TX_BYTES:
            raise _sdk(SdkCode.TX_TOO_LARGE, f"tx size {len(raw)} exceeds max {MAX_TX_BYTES}")
        if hash_hex in self._mempool_hashes or hash_hex in self._tx_index or hash_hex in self._unordered_seen:
            raise _sdk(SdkCode.TX_IN_MEMPOOL_CACHE, f"tx {hash_hex} already exists in cache")
        if len(self._mempool) >= MAX_MEMPOOL_TXS:
            raise _sdk(SdkCode.MEMPOOL_IS_FULL, f"mempool is full: {len(self._mempool)} txs")
        try:
            tx = decode_tx(raw)
        except TxDecodeError as exc:
            raise _sdk(SdkCode.TX_DECODE, str(exc)) from None

        for em in tx.effective_messages:
            self._validate_basic(em.type_url, em.message)
        self._check_timeouts(tx)

        account = self.accounts.get(tx.signer_address)
        if account is None:
            raise _sdk(SdkCode.UNKNOWN_ADDRESS, f"account {tx.signer_address} does not exist")
        if not tx.unordered and tx.sequence != account.check_sequence:
            raise _sdk(SdkCode.WRONG_SEQUENCE,
                       f"account sequence mismatch, expected {account.check_sequence}, got {tx.sequence}")
        if not verify_tx_signature(tx, self.chain_id, account.account_number, public_key=account.public_key):
            raise _sdk(SdkCode.UNAUTHORIZED,
                       f"signature verification failed; please verify account number ({account.account_number}), "
                       f"sequence ({tx.sequence}) and chain-id ({self.chain_id})")
        self._check_signers_and_grants(tx)
        if not tx.unordered:
            account.check_sequence += 1
        return _Pending(raw, hash_hex, tx)

    def _check_timeouts(self, tx: DecodedTx) -> None:
        now = self.now_ns()
        timeout = tx.timeout_timestamp_ns
        if timeout is not None and timeout < now:
            raise _sdk(SdkCode.TX_TIMEOUT, f"block time: {rfc3339(now)}, timeout timestamp: {rfc3339(timeout)}")
        if tx.body.timeout_height and tx.body.timeout_height <= self.height:
            raise _sdk(SdkCode.TX_TIMEOUT_HEIGHT,
                       f"block height: {self.height + 1}, timeout height: {tx.body.timeout_height}")
        if tx.unordered:
            if timeout is None:
                raise _sdk(SdkCode.INVALID_REQUEST, "unordered transaction must have timeout_timestamp set")
            if timeout > now + MAX_UNORDERED_TTL_NS:
                raise _sdk(SdkCode.INVALID_REQUEST, "unordered tx ttl exceeds 10m0s")

    def _check_signers_and_grants(self, tx: DecodedTx) -> None:
        signer = tx.signer_address
        for message in tx.messages:
            expected = message.grantee if isinstance(message, MsgExec) else getattr(message, "creator", "")
            if expected != signer:
                raise _sdk(SdkCode.INVALID_PUBKEY,
                           f"pubKey does not match signer address {expected} with signer index: 0")
        now = self.now_ns()
        for em in tx.effective_messages:
            if em.grantee is None:
                continue
            granter = getattr(em.message, "creator", "")
            if granter == em.grantee:
                continue  # acting for oneself needs no grant, as in x/authz
            grant = self.grants.get((granter, em.grantee, em.type_url))
            if grant is None or (grant.expiration_ns is not None and grant.expiration_ns <= now):
                raise _sdk(SdkCode.UNAUTHORIZED,
                           f"failed to get grant with given granter: {granter}, grantee: {em.grantee} & msgType: "
                           f"{em.type_url} : authorization not found")

    def _validate_basic(self, type_url: str, message: Message) -> None:
        """Each message's ValidateBasic (stateless); unknown message types cannot be routed."""
        if type_url not in _HANDLED_TYPES:
            raise _sdk(SdkCode.UNKNOWN_REQUEST, f"unrecognized message type {type_url!r} for the devnet chain")
        creator = getattr(message, "creator", "")
        if not valid_address(creator):
            raise _sdk(SdkCode.INVALID_ADDRESS, f"invalid creator address ({creator!r})")
        if isinstance(message, itx.MsgSubmitPocBatch):
            if message.poc_stage_start_block_height <= 0:
                raise _sdk(SdkCode.INVALID_REQUEST, "poc_stage_start_block_height must be > 0")
            if not message.batch_id.strip():
                raise _sdk(SdkCode.INVALID_REQUEST, "batch_id must not be blank")
            if not message.nonces or not message.dist:
                raise _sdk(SdkCode.INVALID_REQUEST, "nonces and dist must not be empty")
            if len(message.nonces) != len(message.dist):
                raise _sdk(SdkCode.INVALID_REQUEST,
                           f"nonces ({len(message.nonces)}) and dist ({len(message.dist)}) differ in length")
            if any(n < 0 for n in message.nonces):
                raise _sdk(SdkCode.INVALID_REQUEST, "nonces must be >= 0")
            if any(not math.isfinite(d) or d < 0 for d in message.dist):
                raise _sdk(SdkCode.INVALID_REQUEST, "dist values must be finite and >= 0")
        elif isinstance(message, itx.MsgSubmitPocValidation):
            if not valid_address(message.participant_address):
                raise _sdk(SdkCode.INVALID_ADDRESS, f"invalid participant address ({message.participant_address!r})")
            if message.poc_stage_start_block_height <= 0:
                raise _sdk(SdkCode.INVALID_REQUEST, "poc_stage_start_block_height must be > 0")
        elif isinstance(message, itx.MsgSubmitHardwareDiff):
            for node in [*message.newOrModified, *message.removed]:
                if not node.local_id.strip():
                    raise _sdk(SdkCode.INVALID_REQUEST, "hardware node local_id must not be empty")

    # --- blocks ------------------------------------------------------------------------------------

    def make_block(self, time_ns: int | None = None) -> Block:
        """Deliver the mempool, run EndBlock, commit: the next block."""
        height = self.height + 1
        previous = self.latest_block
        block_time = time_ns if time_ns is not None else time.time_ns()
        if previous is not None and block_time <= previous.time_ns:
            block_time = previous.time_ns + 1  # block times strictly increase, whatever the wall clock does
        pending, self._mempool = self._mempool, []
        self._mempool_hashes.clear()
        records: list[TxRecord] = []
        for item in pending:
            tx = item.tx
            expired = tx.timeout_timestamp_ns is not None and tx.timeout_timestamp_ns < block_time
            if expired or (tx.body.timeout_height and tx.body.timeout_height < height):
                # CometBFT's recheck drops it from the mempool: it is never included, so never found.
                self._unordered_seen.pop(item.hash, None)
                continue
            records.append(self._deliver(item, height, len(records), block_time))
        stages = self._end_block(height)
        for account in self.accounts.values():
            # The mempool is drained every block, so CheckTx expects the committed sequence again.
            account.check_sequence = account.sequence
        for hash_hex, timeout in list(self._unordered_seen.items()):
            if timeout < block_time:
                del self._unordered_seen[hash_hex]
        prev_hash = previous.hash if previous is not None else ""
        digest = hashlib.sha256(
            f"{self.chain_id}|{height}|{block_time}|{prev_hash}|{','.join(r.hash for r in records)}".encode()
        ).hexdigest().upper()
        app_hash = hashlib.sha256(f"app|{digest}|{len(self._batches)}|{len(self._seeds)}".encode()).hexdigest().upper()
        block = Block(height=height, hash=digest, time_ns=block_time, prev_hash=prev_hash, app_hash=app_hash,
                      txs=tuple(records), stages=stages)
        self.blocks.append(block)
        for record in records:
            self._tx_index[record.hash] = record
        return block

    def _deliver(self, item: _Pending, height: int, index: int, block_time: int) -> TxRecord:
        tx = item.tx
        account = self.accounts[tx.signer_address]
        if not tx.unordered:
            account.sequence += 1
        events = [
            TxEvent("tx", (("fee", ""), ("fee_payer", tx.signer_address))),
            TxEvent("tx", (("acc_seq", f"{tx.signer_address}/{tx.sequence}"),)),
            TxEvent("tx", (("signature", base64.b64encode(tx.signatures[0]).decode()),)),
        ]
        code, codespace, text, data = 0, "", "", b""
        effects: list[Effect] = []
        responses: list[Message] = []
        for position, em in enumerate(tx.effective_messages):
            try:
                effect, response = self._handle(em.type_url, em.message, height)
            except TxFailure as failure:
                code, codespace = failure.code, failure.codespace
                text = f"failed to execute message; message index: {position}: {failure.log}"
                break
            except Exception:
                log.exception("devnet message handler failed unexpectedly", tx=item.hash)
                code, codespace, text = 1, CODESPACE_SDK, f"failed to execute message; message index: {position}"
                break
            effects.append(effect)
            responses.append(response)
        if code == 0:
            for effect in effects:  # all or nothing, like a tx's cached store
                effect()
            data = _msg_data(tx, responses).SerializeToString()
            for packed, message in zip(tx.body.messages, tx.messages, strict=True):
                module = "authz" if packed.type_url == _MSG_EXEC_URL else "inference"
                events.append(TxEvent("message", (("action", packed.type_url), ("sender", tx.signer_address),
                                                  ("module", module))))
                if isinstance(message, MsgExec):
                    events.extend(
                        TxEvent("message", (("action", inner.type_url), ("module", "inference"),
                                            ("sender", message.grantee)))
                        for inner in message.msgs
                    )
        return TxRecord(
            hash=item.hash,
            height=height,
            index=index,
            raw=item.raw,
            code=code,
            log=text,
            codespace=codespace,
            data=data,
            gas_wanted=tx.gas_limit,
            gas_used=min(tx.gas_limit, 40_000 + 10 * len(item.raw)) if tx.gas_limit else 0,
            timestamp=rfc3339(block_time),
            events=tuple(events),
            signer=tx.signer_address,
            message_types=tuple(em.type_url for em in tx.effective_messages),
        )

    # --- message rules (DeliverTx) ----------------------------------------------------------------

    def _handle(self, type_url: str, message: Message, height: int) -> tuple[Effect, Message]:
        if isinstance(message, itx.MsgSubmitPocBatch):
            return self._submit_poc_batch(message, height)
        if isinstance(message, itx.MsgSubmitPocValidation):
            return self._submit_poc_validation(message, height)
        if isinstance(message, itx.MsgSubmitHardwareDiff):
            return self._submit_hardware_diff(message)
        if isinstance(message, itx.MsgSubmitSeed):
            return self._submit_seed(message)
        if isinstance(message, itx.MsgClaimRewards):
            return self._claim_rewards(message, height)
        raise _sdk(SdkCode.UNKNOWN_REQUEST, f"unrecognized message type {type_url!r}")

    def _require_participant(self, address: str) -> None:
        if address not in self.participants:
            raise _inference(InferenceCode.PARTICIPANT_NOT_FOUND, f"participant {address} not found")

    def _upcoming_context(self) -> EpochContext:
        upcoming = self.upcoming_epoch()
        if upcoming is None:
            raise _inference(InferenceCode.UPCOMING_EPOCH_NOT_FOUND,
                             f"failed to get upcoming epoch (effective epoch {self.effective_epoch().index})")
        return EpochContext.for_epoch(upcoming, self.params)

    def _check_start(self, ctx: EpochContext, start: int) -> None:
        if start != ctx.start_of_poc:
            raise _inference(InferenceCode.POC_WRONG_START_BLOCK_HEIGHT,
                             f"start block height {start} doesn't match PoC stage start {ctx.start_of_poc} "
                             f"of the upcoming epoch {ctx.epoch_index}")

    def _submit_poc_batch(self, msg: itx.MsgSubmitPocBatch, height: int) -> tuple[Effect, Message]:
        self._require_participant(msg.creator)
        ctx = self._upcoming_context()
        self._check_start(ctx, msg.poc_stage_start_block_height)
        window = ctx.poc_exchange_window
        if not ctx.is_poc_exchange_window(height):
            raise _inference(InferenceCode.POC_TOO_LATE,
                             f"PoC exchange window [{window.start}, {window.end}] is closed at block {height}")
        key = (msg.poc_stage_start_block_height, msg.creator, msg.batch_id)
        batch = PoCBatch(
            participant_address=msg.creator,
            poc_stage_start_block_height=msg.poc_stage_start_block_height,
            received_at_block_height=height,
            nonces=tuple(msg.nonces),
            dist=tuple(msg.dist),
            batch_id=msg.batch_id,
            node_id=msg.node_id,  # stored, unlike the reference chain (DESIGN.md §6)
        )

        def apply() -> None:
            # A re-sent batch (same stage, participant, batch_id) is accepted but stored once.
            self._batches.setdefault(key, batch)

        return apply, itx.MsgSubmitPocBatchResponse()

    def _submit_poc_validation(self, msg: itx.MsgSubmitPocValidation, height: int) -> tuple[Effect, Message]:
        self._require_participant(msg.creator)
        ctx = self._upcoming_context()
        self._check_start(ctx, msg.poc_stage_start_block_height)
        window = ctx.validation_exchange_window
        if not ctx.is_validation_exchange_window(height):
            raise _inference(InferenceCode.POC_TOO_LATE,
                             f"PoC validation exchange window [{window.start}, {window.end}] is closed at block "
                             f"{height}")
        key = (msg.poc_stage_start_block_height, msg.participant_address, msg.creator)
        vote = PoCValidation(
            participant_address=msg.participant_address,
            validator_participant_address=msg.creator,
            poc_stage_start_block_height=msg.poc_stage_start_block_height,
            validated_at_block_height=height,
            nonces=tuple(msg.nonces),
            dist=tuple(msg.dist),
            received_dist=tuple(msg.received_dist),
            r_target=msg.r_target,
            fraud_threshold=msg.fraud_threshold,
            n_invalid=msg.n_invalid,
            probability_honest=msg.probability_honest,
            fraud_detected=msg.fraud_detected,
        )

        def apply() -> None:
            self._validations[key] = vote  # one vote per validator per participant and stage; the last wins

        return apply, itx.MsgSubmitPocValidationResponse()

    def _submit_hardware_diff(self, msg: itx.MsgSubmitHardwareDiff) -> tuple[Effect, Message]:
        self._require_participant(msg.creator)
        try:
            updated = apply_hardware_diff(
                self.registry,
                self.hardware.get(msg.creator),
                creator=msg.creator,
                new_or_modified=[hardware_node_from_proto(n) for n in msg.newOrModified],
                removed=[hardware_node_from_proto(n) for n in msg.removed],
            )
        except InvalidModelError as exc:
            raise _inference(exc.code, str(exc)) from None

        def apply() -> None:
            self.hardware[msg.creator] = updated

        return apply, itx.MsgSubmitHardwareDiffResponse()

    def _submit_seed(self, msg: itx.MsgSubmitSeed) -> tuple[Effect, Message]:
        self._require_participant(msg.creator)
        seed = RandomSeed(participant=msg.creator, epoch_index=msg.epoch_index, signature=msg.signature)

        def apply() -> None:
            self._seeds[(msg.epoch_index, msg.creator)] = seed

        return apply, itx.MsgSubmitSeedResponse()

    def _claim_rewards(self, msg: itx.MsgClaimRewards, height: int) -> tuple[Effect, Message]:
        self._require_participant(msg.creator)
        shares = self._rewards.get(msg.epoch_index)
        if shares is None:
            raise _inference(InferenceCode.REWARDS_NOT_SETTLED, f"epoch {msg.epoch_index} is not settled")
        if any(c.participant == msg.creator and c.epoch_index == msg.epoch_index for c in self._claims):
            raise _inference(InferenceCode.REWARDS_ALREADY_CLAIMED,
                             f"rewards of epoch {msg.epoch_index} were already claimed by {msg.creator}")
        stored = self._seeds.get((msg.epoch_index, msg.creator))
        if stored is None:
            raise _inference(InferenceCode.CLAIM_SIGNATURE_INVALID,
                             f"no seed was submitted by {msg.creator} for epoch {msg.epoch_index}")
        if not self._seed_matches(msg.creator, msg.seed, stored.signature):
            raise _inference(InferenceCode.CLAIM_SIGNATURE_INVALID,
                             f"seed {msg.seed} does not match the signature submitted for epoch {msg.epoch_index}")
        share = shares.get(msg.creator)
        amount = share.amount if share is not None else 0
        claim = ClaimRecord(participant=msg.creator, epoch_index=msg.epoch_index, seed=msg.seed, amount=amount,
                            height=height)

        def apply() -> None:
            self._claims.append(claim)
            self.balances[msg.creator] = self.balances.get(msg.creator, 0) + amount

        result = "Rewards claimed" if amount else "No rewards for this address"
        return apply, itx.MsgClaimRewardsResponse(amount=amount, result=result)

    def _seed_matches(self, participant: str, seed: int, signature_hex: str) -> bool:
        try:
            signature = bytes.fromhex(signature_hex)
            seed_bytes = seed.to_bytes(8, "big", signed=True)
        except (ValueError, OverflowError):
            return False
        # The seed is signed by whichever key sends the participant's txs: the account or its signer.
        return any(verify_signature(key, seed_bytes, signature) for key in self._participant_keys[participant])

    # --- EndBlock ----------------------------------------------------------------------------------

    def _end_block(self, height: int) -> tuple[EndBlockStage, ...]:
        effective = self.effective_epoch()  # as at the start of the block, for every stage (chain-logic §10)
        stages = end_block_stages(effective, self.params, height)
        for stage in stages:
            if stage is EndBlockStage.END_OF_POC_VALIDATION:
                self._end_of_poc_validation(effective, height)
            elif stage is EndBlockStage.SET_NEW_VALIDATORS:
                self._set_new_validators(effective, height)
            elif stage is EndBlockStage.START_OF_POC:
                self._start_of_poc(effective, height)
        return stages

    def _start_of_poc(self, effective: Epoch, height: int) -> None:
        index = effective.index + 1
        self._epochs[index] = Epoch(index, height)
        self._epoch_pointer.set(_LATEST, index, height)
        self._groups.set((index, ""), EpochGroupData(
            poc_start_block_height=height, epoch_index=index, epoch_group_id=next(self._group_ids)
        ), height)
        self._prune_poc_data(index)
        log.info("devnet: PoC started", epoch=index, height=height)

    def _prune_poc_data(self, upcoming: int) -> None:
        # As the chain, after the previous formation consumed the data; the threshold is a genesis param.
        threshold = self.genesis.poc_params.poc_data_pruning_epoch_threshold
        stale = {e.poc_start_block_height for i, e in self._epochs.items() if i >= 1 and upcoming - i >= threshold}
        for store in (self._batches, self._validations):
            for key in [k for k in store if k[0] in stale]:
                del store[key]
        for index in [i for i in self._formation_inputs if upcoming - i >= threshold]:
            del self._formation_inputs[index]

    def _end_of_poc_validation(self, effective: Epoch, height: int) -> None:
        if effective.index > 0:
            self._settle(effective.index, height)
        index = effective.index + 1
        upcoming = self._epochs.get(index)
        if upcoming is None:
            return
        current = self._groups.get((effective.index, ""))
        assert current is not None, "the effective epoch always has a parent group"
        stage = upcoming.poc_start_block_height
        inp = FormationInput(
            epoch_index=index,
            poc_start_block_height=stage,
            registry=self.registry,
            participants=dict(self.participants),
            hardware=dict(self.hardware),
            batches=self.batches(stage),
            validations=self.validations(stage),
            validator_weights={vw.member_address: vw.weight for vw in current.validation_weights},
            seeds={s.participant: s for s in self.seeds(index)},
            previous=self._active.get(effective.index, ()),
            default_unit_of_compute_price=(
                current.unit_of_compute_price if index > 1 else self.params.default_unit_of_compute_price
            ),
            poc_slot_policy=self.genesis.poc_slot_policy,
        )
        formed = form_epoch(inp)
        self._formation_inputs[index] = inp
        self._active[index] = formed.active_participants
        existing = self._groups.get((index, ""))
        group_id = existing.epoch_group_id if existing is not None else next(self._group_ids)
        parent = replace(formed.parent, epoch_group_id=group_id)
        self._groups.set((index, ""), parent, height)
        for sub in formed.sub_groups:
            self._groups.set((index, sub.model_id), replace(sub, epoch_group_id=next(self._group_ids)), height)
        self._reports[index] = self._build_report(index, stage, height, parent, formed.active_participants)
        log.info("devnet: epoch formed", epoch=index, height=height, members=len(formed.active_participants),
                 models=list(parent.sub_group_models))

    def _set_new_validators(self, effective: Epoch, height: int) -> None:
        index = effective.index + 1
        new_parent = self._groups.get((index, ""))
        old_parent = self._groups.get((effective.index, ""))
        if new_parent is not None and old_parent is not None:
            self._groups.set((index, ""), replace(
                new_parent, effective_block_height=height, previous_epoch_requests=old_parent.number_of_requests
            ), height)
            self._groups.set((effective.index, ""), replace(old_parent, last_block_height=height - 1), height)
        self._epoch_pointer.set(_EFFECTIVE, index, height)
        report = self._reports.get(index)
        if report is not None:
            self._reports[index] = replace(report, effective_at_height=height)
        log.info("devnet: new epoch effective", epoch=index, height=height)

    def _settle(self, epoch_index: int, height: int) -> None:
        groups = self.epoch_groups(epoch_index)
        if groups is None or epoch_index in self._rewards:
            return
        parent, subs = groups
        rewards = self.genesis.rewards
        amount = fixed_epoch_reward(rewards.initial_epoch_reward, rewards.decay_rate,
                                    epoch_index - rewards.genesis_epoch)
        shares = settle_epoch_rewards(parent, subs, amount)
        self._rewards[epoch_index] = {s.participant: s for s in shares}
        report = self._reports.get(epoch_index)
        if report is not None:
            by_address = self._rewards[epoch_index]
            members = tuple(
                replace(m, reward=by_address[m.address].amount, full_coverage=by_address[m.address].full_coverage)
                if m.address in by_address else m
                for m in report.members
            )
            self._reports[epoch_index] = replace(report, members=members, epoch_reward=amount,
                                                 settled_at_height=height)

    def _build_report(
        self, index: int, stage: int, height: int, parent: EpochGroupData, active: Iterable[ActiveParticipant]
    ) -> EpochReport:
        members = []
        for p in active:
            nodes: list[NodeReport] = []
            for position, group in enumerate(p.ml_nodes):
                model_id = p.models[position] if position < len(p.models) else ""
                nodes.extend(
                    NodeReport(node_id=n.node_id, model_id=model_id, poc_weight=n.poc_weight,
                               poc_slot=n.is_active_during_poc, throughput=n.throughput)
                    for n in group.ml_nodes
                )
            members.append(MemberReport(address=p.index, name=self.names.get(p.index, ""), weight=p.weight,
                                        models=p.models, nodes=tuple(nodes)))
        return EpochReport(
            epoch_index=index,
            poc_start_block_height=stage,
            formed_at_height=height,
            effective_at_height=None,
            total_weight=parent.total_weight,
            sub_group_models=parent.sub_group_models,
            unit_of_compute_price=parent.unit_of_compute_price,
            members=tuple(members),
        )


_HANDLED_TYPES = frozenset({_POC_BATCH_URL, _POC_VALIDATION_URL, _HARDWARE_DIFF_URL, _SEED_URL, _CLAIM_URL})


def _msg_data(tx: DecodedTx, responses: list[Message]) -> TxMsgData:
    """TxMsgData with one response per top-level message (a MsgExec's wraps its inner responses)."""
    packed = []
    position = 0
    for message in tx.messages:
        if isinstance(message, MsgExec):
            inner = responses[position:position + len(message.msgs)]
            position += len(message.msgs)
            packed.append(pack_any(MsgExecResponse(results=[r.SerializeToString() for r in inner])))
        else:
            packed.append(pack_any(responses[position]))
            position += 1
    return TxMsgData(msg_responses=packed)

