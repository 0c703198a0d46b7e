"""The devnet's ledger: the state machine that behaves like the gonka chain towards its clients.

Blocks are made on demand (`make_block`; the runner calls it on a timer). A block first delivers the
mempool's txs in arrival order (`deliver`), applying each message's rules at that height (`handlers`),
then runs the EndBlock stages of reference/chain-logic.md §10 (`endblock`).

Transactions are checked the way a Cosmos SDK 0.53 node checks them (DESIGN.md §6): `check_tx`
(CheckTx: the mempool's checks, then `ante`) rejects what no block could ever accept (undecodable
bytes, bad signature, wrong chain id or account number, missing authz grant, a message that fails its
basic validity, a replayed or expired unordered tx) with an "sdk" code; the message rules that depend
on chain state and height (exchange windows, start heights, governance models) run when the block is
made, and a violation is the tx's non-zero result code in that block, with codespace "inference".

Everything here is synchronous and runs on the event loop thread: callers never see a half-made block.
State that clients may query "at a height" (latest and effective epoch, epoch group data) keeps its
history, so a daemon replaying a missed block sees the epoch state of that block.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections import deque
from dataclasses import dataclass, replace

from google.protobuf.message import Message

from dapi.chain.epochs import Epoch, EpochParams
from dapi.chain.tx import DecodedTx, tx_hash
from dapi.devnet.genesis import DevnetGenesis, Grant
from dapi.devnet.ledger.ante import AnteContext, GrantKey, run_ante
from dapi.devnet.ledger.codes import CODESPACE_SDK, SdkCode, TxFailure, sdk_failure, sdk_text
from dapi.devnet.ledger.context import BlockContext
from dapi.devnet.ledger.deliver import deliver_tx
from dapi.devnet.ledger.endblock import end_block
from dapi.devnet.ledger.records import Account, Block, CheckTxResult, ClaimRecord, EpochReport, InferenceStat, TxRecord
from dapi.devnet.ledger.state import InferenceState
from dapi.devnet.schedule.formation import FormationInput
from dapi.devnet.schedule.models import ModelRegistry
from dapi.devnet.schedule.records import (
    ActiveParticipant,
    EpochGroupData,
    HardwareNodes,
    Model,
    ParticipantRecord,
    PoCBatch,
    PoCValidation,
    RandomSeed,
)
from dapi.devnet.schedule.settlement import RewardShare
from dapi.logs import get_logger

__all__ = ["FIRST_ACCOUNT_NUMBER", "MAX_MEMPOOL_TXS", "MAX_TX_BYTES", "Ledger"]

log = get_logger(__name__)

# CometBFT's default max_tx_bytes, and the mempool's capacity in txs.
MAX_TX_BYTES = 1024 * 1024
MAX_MEMPOOL_TXS = 10_000
FIRST_ACCOUNT_NUMBER = 10  # low numbers belong to module accounts on a real chain


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


class Ledger:
    """The devnet chain's state and rules, with no I/O: CheckTx, block making, and the reads clients query.

    It holds the accounts and authz grants, the inference module's state (`state`), the committed
    blocks and the mempool. The wire servers answer from it; the simulated peers submit to it.

    Usage:

    ```python
    >>> ledger = Ledger(load_genesis(None))
    >>> ledger.check_tx(signed.raw)
    CheckTxResult(code=0, log='', codespace='', hash='…')
    >>> block = ledger.make_block()
    >>> ledger.tx(block.txs[0].hash).code
    0
    ```

    **Parameters:**

    * **genesis** - The devnet genesis: chain id, epoch/PoC/reward params, governance models, the
    participants (each gets an account for its account key and one for its signer key, numbered from
    10 in genesis order, and is a validator of epoch 0 with its genesis weight), the funded client
    accounts (numbered after them; each also gets a participant record, as a developer needs one) and
    the authz grants.
    * **genesis_time_ns** - *(optional)* The genesis time, in nanoseconds since the Unix epoch: the
    ledger's clock for CheckTx until block 1 is made. Defaults to now.
    """

    def __init__(self, genesis: DevnetGenesis, *, genesis_time_ns: int | None = None) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.params: EpochParams = genesis.epoch_params
        self.genesis_time_ns = genesis_time_ns if genesis_time_ns is not None else time.time_ns()
        self.catching_up = False

        self.accounts: dict[str, Account] = {}
        self.grants: dict[GrantKey, Grant] = {}
        numbers = itertools.count(FIRST_ACCOUNT_NUMBER)
        for p in genesis.participants:
            for key in (p.account_key, p.signer_key):
                self.accounts[key.address] = Account(key.address, key.public_key, next(numbers))
        for client in genesis.clients:
            self.accounts[client.address] = Account(client.address, client.public_key, next(numbers))
        for grant in genesis.grants:
            self.grants[(grant.granter, grant.grantee, grant.msg_type_url)] = grant
        self.state = InferenceState.from_genesis(genesis)

        self.blocks: list[Block] = []
        self._tx_index: dict[str, TxRecord] = {}
        self._mempool: list[_Pending] = []
        self._mempool_hashes: set[str] = set()
        self._unordered_seen: dict[str, int] = {}  # hash -> timeout (ns); replay protection of unordered txs
        self._faults: deque[_Fault] = deque()
        self.checktx_counts: dict[int, int] = {}  # CheckTx code -> how many answers (observability)

    # --- the inference module's stores ------------------------------------------------------------

    @property
    def registry(self) -> ModelRegistry:
        return self.state.registry

    @property
    def participants(self) -> dict[str, ParticipantRecord]:
        return self.state.participants

    @property
    def names(self) -> dict[str, str]:
        return self.state.names

    @property
    def hardware(self) -> dict[str, HardwareNodes]:
        return self.state.hardware

    @property
    def balances(self) -> dict[str, int]:
        return self.state.balances

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
        return self.state.latest_epoch(height)

    def effective_epoch(self, height: int | None = None) -> Epoch:
        return self.state.effective_epoch(height)

    def upcoming_epoch(self) -> Epoch | None:
        return self.state.upcoming_epoch()

    def epoch(self, index: int) -> Epoch | None:
        return self.state.epochs.get(index)

    def epoch_group(self, epoch_index: int, model_id: str = "", height: int | None = None) -> EpochGroupData | None:
        return self.state.groups.get((epoch_index, model_id), height)

    def epoch_groups(self, epoch_index: int) -> tuple[EpochGroupData, tuple[EpochGroupData, ...]] | None:
        """The parent group of an epoch and its model sub-groups (in sub_group_models order)."""
        return self.state.epoch_groups(epoch_index)

    def all_epoch_groups(self) -> list[EpochGroupData]:
        groups = [self.state.groups.get(key) for key in sorted(self.state.groups.keys())]
        return [g for g in groups if g is not None]

    def active_participants(self, epoch_index: int) -> tuple[ActiveParticipant, ...]:
        return self.state.active.get(epoch_index, ())

    def formation_input(self, epoch_index: int) -> FormationInput | None:
        """What formation of `epoch_index` read (kept as long as that stage's PoC data)."""
        return self.state.formation_inputs.get(epoch_index)

    def batches(self, stage: int | None = None, participant: str | None = None) -> list[PoCBatch]:
        return self.state.batches_of(stage, participant)

    def validations(self, stage: int | None = None, participant: str | None = None) -> list[PoCValidation]:
        return self.state.validations_of(stage, participant)

    def seeds(self, epoch_index: int | None = None) -> list[RandomSeed]:
        return self.state.seeds_of(epoch_index)

    def claims(self) -> list[ClaimRecord]:
        return list(self.state.claims)

    def rewards(self, epoch_index: int) -> dict[str, RewardShare] | None:
        shares = self.state.rewards.get(epoch_index)
        return dict(shares) if shares is not None else None

    def report(self, epoch_index: int) -> EpochReport | None:
        return self.state.reports.get(epoch_index)

    def reports(self) -> list[EpochReport]:
        return [self.state.reports[k] for k in sorted(self.state.reports)]

    def tx(self, hash_hex: str) -> TxRecord | None:
        return self._tx_index.get(hash_hex.upper())

    def account(self, address: str) -> Account | None:
        return self.accounts.get(address)

    def hardware_nodes(self, participant: str) -> HardwareNodes | None:
        return self.state.hardware.get(participant)

    @property
    def mempool_size(self) -> int:
        return len(self._mempool)

    def mempool_messages(self) -> list[Message]:
        """The messages waiting in the mempool (MsgExec unwrapped), in arrival order."""
        return [eff.message for pending in self._mempool for eff in pending.tx.effective_messages]

    # --- hooks -------------------------------------------------------------------------------------

    def set_governance_model(self, model: Model) -> None:
        """Upsert a governance model now (as a passed RegisterModel proposal); snapshots stay as formed."""
        self.state.registry = self.state.registry.register_model(model)

    def remove_governance_model(self, model_id: str) -> None:
        self.state.registry = self.state.registry.delete_governance_model(model_id)

    def record_inference_stat(self, model: str, tokens: int, time_ms: int | None = None) -> None:
        """Add one inference to the developer statistics (at the last block's time unless given)."""
        when = self.now_ns() // 1_000_000 if time_ms is None else time_ms
        key = f"recorded-{len(self.state.inference_stats)}"
        self.state.inference_stats[key] = InferenceStat(time_ms=when, model=model, tokens=tokens)

    def tokens_by_model(self, time_from_ms: int, time_to_ms: int) -> dict[str, tuple[int, int]]:
        """(AI tokens, inferences) per model of the statistics in [from, to] ms, as the chain sums them."""
        totals: dict[str, tuple[int, int]] = {}
        for stat in self.state.inference_stats.values():
            if time_from_ms <= stat.time_ms <= time_to_ms:
                tokens, count = totals.get(stat.model, (0, 0))
                totals[stat.model] = (tokens + stat.tokens, count + 1)
        return totals

    def set_model_price(self, model: str, price: int | None) -> None:
        """Set (None: clear) the per-token price new inferences of `model` lock, as dynamic pricing would."""
        if price is None:
            self.state.model_prices.pop(model, None)
        else:
            self.state.model_prices[model] = price

    def inference_totals(self, epoch_index: int) -> dict[str, tuple[int, int]]:
        """(requests, tokens) per model of the inferences completed while `epoch_index` was effective."""
        return self.state.completed_by_model(epoch_index)

    def set_inference_url(self, participant: str, url: str) -> None:
        """Point a participant's record at the API node that serves it (as MsgSubmitNewParticipant would)."""
        self.state.participants[participant] = replace(self.state.participants[participant], inference_url=url)

    def inject_checktx_fault(
        self, count: int, *, code: int = SdkCode.MEMPOOL_IS_FULL, codespace: str = CODESPACE_SDK, log: str = ""
    ) -> None:
        """The next `count` externally submitted txs are answered (code, codespace, log) and dropped."""
        if count < 1 or code == 0:
            raise ValueError("a fault needs count >= 1 and a non-zero code")
        default = sdk_text(code) if codespace == CODESPACE_SDK else ""
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
        # The mempool's own checks (CometBFT), then the app's (the ante handler).
        if len(raw) > MAX_TX_BYTES:
            raise sdk_failure(SdkCode.TX_TOO_LARGE, f"tx size {len(raw)} exceeds max {MAX_TX_BYTES}")
        if hash_hex in self._mempool_hashes or hash_hex in self._tx_index or hash_hex in self._unordered_seen:
            raise sdk_failure(SdkCode.TX_IN_MEMPOOL_CACHE, f"tx {hash_hex} already exists in cache")
        if len(self._mempool) >= MAX_MEMPOOL_TXS:
            raise sdk_failure(SdkCode.MEMPOOL_IS_FULL, f"mempool is full: {len(self._mempool)} txs")
        ctx = AnteContext(chain_id=self.chain_id, height=self.height, now_ns=self.now_ns(), accounts=self.accounts,
                          grants=self.grants)
        return _Pending(raw, hash_hex, run_ante(raw, ctx))

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
        ctx = BlockContext(height=height, time_ns=block_time, accounts=self.accounts, grants=self.grants)
        for item in pending:
            tx = item.tx
            expired = tx.timeout_timestamp_ns is not None and tx.timeout_timestamp_ns < block_time
            if expired or (tx.body.timeout_height and tx.body.timeout_height < height):
                # CometBFT's recheck drops it from the mempool: it is never included, so never found.
                self._unordered_seen.pop(item.hash, None)
                continue
            account = self.accounts[tx.signer_address]
            if not tx.unordered:
                account.sequence += 1
            records.append(deliver_tx(self.state, tx, item.raw, item.hash, ctx=ctx, index=len(records)))
        stages = end_block(self.state, height)
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
        app_hash = hashlib.sha256(
            f"app|{digest}|{len(self.state.batches)}|{len(self.state.seeds)}".encode()
        ).hexdigest().upper()
        block = Block(height=height, hash=digest, time_ns=block_time, prev_hash=prev_hash, app_hash=app_hash,
                      txs=tuple(records), stages=stages, events=tuple(self.state.end_block_events))
        self.blocks.append(block)
        for record in records:
            self._tx_index[record.hash] = record
        return block
