"""The devnet's ledger: the simulated chain's state machine, split along the Cosmos SDK's seams.

Modules, bottom up: `codes` (result codes, codespaces, `TxFailure`), `records` (accounts, tx results,
blocks, claims, epoch reports, the height-versioned store), `inferences` (the inference, its validation
details, a participant's work), `state` (the inference module's store and bank balances), `context`
(what handlers read of the block, accounts and grants), `inference_msgs` (MsgStartInference,
MsgFinishInference, expiry), `validations` (MsgValidation, the claim-time check), `executors`
(GetRandomExecutor's draw), `handlers` (the msg server: message rules at block time), `ante` (CheckTx's
checks), `deliver` (a tx's messages in a block, all or nothing), `endblock` (the EndBlock stages:
inference expiry, PoC start, epoch formation, new validators, settlement), and `ledger` (`Ledger`:
holds the state, makes blocks, answers reads).
"""

from __future__ import annotations

from dapi.devnet.ledger.codes import CODESPACE_INFERENCE, CODESPACE_SDK, InferenceCode, SdkCode
from dapi.devnet.ledger.inferences import Inference, InferenceStatus, ParticipantStatus
from dapi.devnet.ledger.ledger import Ledger
from dapi.devnet.ledger.records import (
    Account,
    Block,
    CheckTxResult,
    ClaimRecord,
    EpochReport,
    MemberReport,
    NodeReport,
    TxEvent,
    TxRecord,
    rfc3339,
    valid_address,
)

__all__ = [
    "CODESPACE_INFERENCE",
    "CODESPACE_SDK",
    "Account",
    "Block",
    "CheckTxResult",
    "ClaimRecord",
    "EpochReport",
    "Inference",
    "InferenceCode",
    "InferenceStatus",
    "Ledger",
    "MemberReport",
    "NodeReport",
    "ParticipantStatus",
    "SdkCode",
    "TxEvent",
    "TxRecord",
    "rfc3339",
    "valid_address",
]
