"""CheckTx's checks, as the Cosmos SDK's ante handler: what no block could ever accept.

`run_ante(raw, ctx)` decodes the tx and checks, in this order: each message's basic validity
(stateless ValidateBasic, and that the module routes it), the timeouts (timeout height, timeout
timestamp, the unordered-tx TTL), the signer's account and ordered sequence, the signature
(SIGN_MODE_DIRECT against account number and chain id), that every message's creator is the signer
(or, in a MsgExec, the grantee) and that a grantee holds an unexpired authz grant for each message it
executes. Every failure is a `TxFailure` in codespace "sdk". The mempool's own checks (size, replay
cache, capacity) run before this, in the ledger.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import Message

from dapi.chain.tx import DecodedTx, TxDecodeError, decode_tx, verify_tx_signature
from dapi.devnet.genesis import Grant
from dapi.devnet.ledger.codes import SdkCode, sdk_failure
from dapi.devnet.ledger.context import GrantKey
from dapi.devnet.ledger.handlers import HANDLED_TYPE_URLS
from dapi.devnet.ledger.inference_msgs import validate_finish_basic, validate_start_basic
from dapi.devnet.ledger.records import Account, rfc3339, valid_address
from dapi.devnet.ledger.validations import validate_validation_basic
from dapi.gen.cosmos.authz.v1beta1.tx_pb2 import MsgExec
from dapi.gen.inference.inference import tx_pb2 as itx

__all__ = ["MAX_UNORDERED_TTL_NS", "AnteContext", "GrantKey", "run_ante", "validate_basic"]

# The SDK's unordered-tx TTL limit (10 minutes).
MAX_UNORDERED_TTL_NS = 600 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class AnteContext:
    """What the ante checks read: the chain id, the last committed height and block time, accounts, grants.

    `accounts` is the ledger's own map: a passing ordered tx advances its account's `check_sequence`.
    """

    chain_id: str
    height: int
    now_ns: int
    accounts: Mapping[str, Account]
    grants: Mapping[GrantKey, Grant]


def run_ante(raw: bytes, ctx: AnteContext) -> DecodedTx:
    """Decode and check one tx for the mempool; raises TxFailure with an "sdk" code."""
    try:
        tx = decode_tx(raw)
    except TxDecodeError as exc:
        raise sdk_failure(SdkCode.TX_DECODE, str(exc)) from None

    for em in tx.effective_messages:
        validate_basic(em.type_url, em.message)
    _check_timeouts(tx, ctx)

    account = ctx.accounts.get(tx.signer_address)
    if account is None:
        raise sdk_failure(SdkCode.UNKNOWN_ADDRESS, f"account {tx.signer_address} does not exist")
    if not tx.unordered and tx.sequence != account.check_sequence:
        raise sdk_failure(SdkCode.WRONG_SEQUENCE,
                          f"account sequence mismatch, expected {account.check_sequence}, got {tx.sequence}")
    if not verify_tx_signature(tx, ctx.chain_id, account.account_number, public_key=account.public_key):
        raise sdk_failure(SdkCode.UNAUTHORIZED,
                          f"signature verification failed; please verify account number ({account.account_number}), "
                          f"sequence ({tx.sequence}) and chain-id ({ctx.chain_id})")
    _check_signers_and_grants(tx, ctx)
    if not tx.unordered:
        account.check_sequence += 1
    return tx


def _check_timeouts(tx: DecodedTx, ctx: AnteContext) -> None:
    now = ctx.now_ns
    timeout = tx.timeout_timestamp_ns
    if timeout is not None and timeout < now:
        raise sdk_failure(SdkCode.TX_TIMEOUT, f"block time: {rfc3339(now)}, timeout timestamp: {rfc3339(timeout)}")
    if tx.body.timeout_height and tx.body.timeout_height <= ctx.height:
        raise sdk_failure(SdkCode.TX_TIMEOUT_HEIGHT,
                          f"block height: {ctx.height + 1}, timeout height: {tx.body.timeout_height}")
    if tx.unordered:
        if timeout is None:
            raise sdk_failure(SdkCode.INVALID_REQUEST, "unordered transaction must have timeout_timestamp set")
        if timeout > now + MAX_UNORDERED_TTL_NS:
            raise sdk_failure(SdkCode.INVALID_REQUEST, "unordered tx ttl exceeds 10m0s")


def _check_signers_and_grants(tx: DecodedTx, ctx: AnteContext) -> None:
    signer = tx.signer_address
    for message in tx.messages:
        expected = message.grantee if isinstance(message, MsgExec) else getattr(message, "creator", "")
        if expected != signer:
            raise sdk_failure(SdkCode.INVALID_PUBKEY,
                              f"pubKey does not match signer address {expected} with signer index: 0")
    now = ctx.now_ns
    for em in tx.effective_messages:
        if em.grantee is None:
            continue
        granter = getattr(em.message, "creator", "")
        if granter == em.grantee:
            continue  # acting for oneself needs no grant, as in x/authz
        grant = ctx.grants.get((granter, em.grantee, em.type_url))
        if grant is None or not grant.live_at(now):
            raise sdk_failure(SdkCode.UNAUTHORIZED,
                              f"failed to get grant with given granter: {granter}, grantee: {em.grantee} & msgType: "
                              f"{em.type_url} : authorization not found")


def validate_basic(type_url: str, message: Message) -> None:
    """Each message's ValidateBasic (stateless); unknown message types cannot be routed."""
    if type_url not in HANDLED_TYPE_URLS:
        raise sdk_failure(SdkCode.UNKNOWN_REQUEST, f"unrecognized message type {type_url!r} for the devnet chain")
    if isinstance(message, itx.MsgStartInference):
        return validate_start_basic(message)
    if isinstance(message, itx.MsgFinishInference):
        return validate_finish_basic(message)
    if isinstance(message, itx.MsgValidation):
        return validate_validation_basic(message)
    creator = getattr(message, "creator", "")
    if not valid_address(creator):
        raise sdk_failure(SdkCode.INVALID_ADDRESS, f"invalid creator address ({creator!r})")
    if isinstance(message, itx.MsgSubmitPocBatch):
        if message.poc_stage_start_block_height <= 0:
            raise sdk_failure(SdkCode.INVALID_REQUEST, "poc_stage_start_block_height must be > 0")
        if not message.batch_id.strip():
            raise sdk_failure(SdkCode.INVALID_REQUEST, "batch_id must not be blank")
        if not message.nonces or not message.dist:
            raise sdk_failure(SdkCode.INVALID_REQUEST, "nonces and dist must not be empty")
        if len(message.nonces) != len(message.dist):
            raise sdk_failure(SdkCode.INVALID_REQUEST,
                              f"nonces ({len(message.nonces)}) and dist ({len(message.dist)}) differ in length")
        if any(n < 0 for n in message.nonces):
            raise sdk_failure(SdkCode.INVALID_REQUEST, "nonces must be >= 0")
        if any(not math.isfinite(d) or d < 0 for d in message.dist):
            raise sdk_failure(SdkCode.INVALID_REQUEST, "dist values must be finite and >= 0")
    elif isinstance(message, itx.MsgSubmitPocValidation):
        if not valid_address(message.participant_address):
            raise sdk_failure(SdkCode.INVALID_ADDRESS, f"invalid participant address ({message.participant_address!r})")
        if message.poc_stage_start_block_height <= 0:
            raise sdk_failure(SdkCode.INVALID_REQUEST, "poc_stage_start_block_height must be > 0")
    elif isinstance(message, itx.MsgSubmitHardwareDiff):
        for node in [*message.newOrModified, *message.removed]:
            if not node.local_id.strip():
                raise sdk_failure(SdkCode.INVALID_REQUEST, "hardware node local_id must not be empty")
