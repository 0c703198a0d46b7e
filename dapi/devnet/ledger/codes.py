"""Result codes and codespaces: what the ledger answers when a tx fails, and the failure that carries it.

CheckTx failures use the Cosmos SDK's own codes (codespace "sdk", types/errors/errors.go); failures of
the inference module's message rules use codespace "inference". `TxFailure` is raised by the ante
checks and the message handlers and turned into a tx result by the ledger.
"""

from __future__ import annotations

from dapi.devnet.schedule.models import InvalidModelError

__all__ = [
    "CODESPACE_INFERENCE",
    "CODESPACE_SDK",
    "InferenceCode",
    "SdkCode",
    "TxFailure",
    "inference_failure",
    "sdk_failure",
    "sdk_text",
]

CODESPACE_SDK = "sdk"
CODESPACE_INFERENCE = "inference"


class SdkCode:
    """Cosmos SDK error codes (codespace "sdk", types/errors/errors.go) the devnet answers with."""

    TX_DECODE = 2
    UNAUTHORIZED = 4
    INSUFFICIENT_FUNDS = 5
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
    SdkCode.INSUFFICIENT_FUNDS: "insufficient funds",
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

    1101-1135 are the gonka chain's own numbers (reference/inference.md §2, §4); 1150 and up are the
    devnet's, for rules whose chain code is not pinned by the spec.
    """

    INFERENCE_ID_EXISTS = 1101
    INFERENCE_NOT_FOUND = 1102
    PARTICIPANT_NOT_FOUND = 1103
    INFERENCE_NOT_FINISHED = 1104
    CANNOT_VALIDATE_OWN_INFERENCE = 1105
    REQUESTER_CANNOT_PAY = 1106  # text only: the escrow failure itself is the bank's code
    POC_WRONG_START_BLOCK_HEIGHT = 1107
    POC_TOO_LATE = 1108
    CLAIM_SIGNATURE_INVALID = 1116
    VALIDATIONS_MISSED = 1117
    INFERENCE_HAS_INVALID_MODEL = 1125
    MODEL_SUB_GROUP_NOT_FOUND = 1126
    COMPLETION_FAILED = 1127
    INVALID_SIGNATURE = 1132
    INFERENCE_EXPIRED = 1133
    INVALID_MODEL = InvalidModelError.code  # 1134
    EPOCH_MODEL_NOT_FOUND = 1135
    UPCOMING_EPOCH_NOT_FOUND = 1150
    REWARDS_NOT_SETTLED = 1151
    REWARDS_ALREADY_CLAIMED = 1152


_INFERENCE_TEXT = {
    InferenceCode.INFERENCE_ID_EXISTS: "inference with id already exists",
    InferenceCode.INFERENCE_NOT_FOUND: "inference with id not found",
    InferenceCode.PARTICIPANT_NOT_FOUND: "participant not found",
    InferenceCode.INFERENCE_NOT_FINISHED: "inference not finished",
    InferenceCode.CANNOT_VALIDATE_OWN_INFERENCE: "participant cannot validate own inference",
    InferenceCode.REQUESTER_CANNOT_PAY: "requester cannot pay for inference",
    InferenceCode.POC_WRONG_START_BLOCK_HEIGHT: "start block height mismatch",
    InferenceCode.POC_TOO_LATE: "POC submission is too late",
    InferenceCode.CLAIM_SIGNATURE_INVALID: "claim signature invalid",
    InferenceCode.VALIDATIONS_MISSED: "validations missed",
    InferenceCode.INFERENCE_HAS_INVALID_MODEL: "inference has a model that has no sub-group",
    InferenceCode.MODEL_SUB_GROUP_NOT_FOUND: "model sub-group not found",
    InferenceCode.COMPLETION_FAILED: "inference completion failed",
    InferenceCode.INVALID_SIGNATURE: "invalid signature",
    InferenceCode.INFERENCE_EXPIRED: "inference expired",
    InferenceCode.EPOCH_MODEL_NOT_FOUND: "epoch model not found",
    InferenceCode.UPCOMING_EPOCH_NOT_FOUND: "upcoming epoch not found",
    InferenceCode.REWARDS_NOT_SETTLED: "rewards not settled",
    InferenceCode.REWARDS_ALREADY_CLAIMED: "rewards already claimed",
}


def sdk_text(code: int) -> str:
    """The SDK's registered description of an "sdk" code ("" for a code it does not name)."""
    return _SDK_TEXT.get(code, "")


class TxFailure(Exception):
    """A CheckTx or message failure: what the chain answers as (code, codespace, log)."""

    def __init__(self, code: int, codespace: str, detail: str) -> None:
        base = (_SDK_TEXT if codespace == CODESPACE_SDK else _INFERENCE_TEXT).get(code, "")
        text = f"{detail}: {base}" if base and base not in detail else detail
        super().__init__(text)
        self.code = code
        self.codespace = codespace
        self.log = text


def sdk_failure(code: int, detail: str) -> TxFailure:
    """A failure in codespace "sdk" (CheckTx, routing)."""
    return TxFailure(code, CODESPACE_SDK, detail)


def inference_failure(code: int, detail: str) -> TxFailure:
    """A failure of one of the inference module's message rules."""
    return TxFailure(code, CODESPACE_INFERENCE, detail)
