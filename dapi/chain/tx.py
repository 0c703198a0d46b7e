"""Cosmos SDK 0.53 transactions: build, sign (SIGN_MODE_DIRECT), encode, and decode/verify.

The signature covers ``SignDoc{body_bytes, auth_info_bytes, chain_id, account_number}``, where body
and auth info are the exact bytes that go into ``TxRaw``. Verification therefore always works on the
bytes as received, never on a re-encoding.

Production txs are *unordered* (sequence 0, ``unordered=true``, ``timeout_timestamp`` = now + 60 s):
instead of a sequence the chain remembers each tx hash until its timeout and rejects repeats, so
parallel sends do not conflict, but two txs of one signer with the same body and timeout would be
one tx to the chain. Every signer therefore gets strictly increasing timeouts (``unique_timeout_ns``).

When the signer (warm key) is not the participant's account (cold key), the messages go inside an
authz ``MsgExec{grantee: signer}``; their ``creator`` stays the account address, which the caller sets.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.any_pb2 import Any
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from dapi.chain.keys import SigningKey, address_from_public_key, verify_signature
from dapi.chain.messages import UnknownTypeUrl, pack_any, type_url_of, unpack_any
from dapi.gen.cosmos.authz.v1beta1.tx_pb2 import MsgExec
from dapi.gen.cosmos.base.v1beta1.coin_pb2 import Coin
from dapi.gen.cosmos.crypto.secp256k1.keys_pb2 import PubKey
from dapi.gen.cosmos.tx.signing.v1beta1.signing_pb2 import SIGN_MODE_DIRECT
from dapi.gen.cosmos.tx.v1beta1.tx_pb2 import AuthInfo, Fee, ModeInfo, SignDoc, SignerInfo, TxBody, TxRaw

__all__ = [
    "DEFAULT_GAS_LIMIT",
    "DEFAULT_TIMEOUT_SECONDS",
    "DecodedTx",
    "EffectiveMessage",
    "SignedTx",
    "TxDecodeError",
    "TxSigner",
    "decode_tx",
    "sign_doc_bytes",
    "sign_tx",
    "tx_hash",
    "unique_timeout_ns",
    "verify_tx_signature",
    "wrap_in_exec",
]

# The reference daemon's values: gonka charges no gas fees, so the limit only has to be out of reach.
DEFAULT_GAS_LIMIT = 1_000_000_000
DEFAULT_TIMEOUT_SECONDS = 60.0
_NS_PER_SECOND = 1_000_000_000
_MSG_EXEC_TYPE_URL = type_url_of(MsgExec)
_PUBKEY_TYPE_URL = type_url_of(PubKey)


class TxDecodeError(ValueError):
    """Bytes that are not a single-signer SIGN_MODE_DIRECT secp256k1 tx of messages we know."""


def tx_hash(raw: bytes) -> str:
    """Uppercase hex sha256 of the TxRaw bytes: the hash CometBFT and the SDK index the tx under."""
    return hashlib.sha256(raw).hexdigest().upper()


# --------------------------------------------------------------------------------------------------
# Unique timeouts
# --------------------------------------------------------------------------------------------------

_last_timeout_ns: dict[str, int] = {}
_timeout_lock = threading.Lock()


def unique_timeout_ns(signer_address: str, now_ns: int, timeout_ns: int) -> int:
    """``now + timeout``, bumped past the signer's previous value so it strictly increases per signer.

    Kept per process (not per TxSigner) because a signer object is rebuilt when the account number
    is re-queried, and the new one must not reuse a timeout the old one already signed with.
    """
    with _timeout_lock:
        candidate = now_ns + timeout_ns
        last = _last_timeout_ns.get(signer_address)
        if last is not None and candidate <= last:
            candidate = last + 1
        _last_timeout_ns[signer_address] = candidate
        return candidate


# --------------------------------------------------------------------------------------------------
# Building and signing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedTx:
    """A signed tx ready to broadcast: the TxRaw bytes, their hash, and the timeout of an unordered tx."""

    raw: bytes  # TxRaw bytes, ready for BroadcastTx / broadcast_tx_sync
    hash: str  # uppercase hex, as the chain reports it
    timeout_timestamp_ns: int | None  # set for unordered txs: after it the chain will never include the tx


def wrap_in_exec(messages: Sequence[Message], grantee: str) -> MsgExec:
    return MsgExec(grantee=grantee, msgs=[pack_any(m) for m in messages])


def sign_doc_bytes(body_bytes: bytes, auth_info_bytes: bytes, chain_id: str, account_number: int) -> bytes:
    return SignDoc(
        body_bytes=body_bytes, auth_info_bytes=auth_info_bytes, chain_id=chain_id, account_number=account_number
    ).SerializeToString()


def _timestamp(ns: int) -> Timestamp:
    seconds, nanos = divmod(ns, _NS_PER_SECOND)
    return Timestamp(seconds=seconds, nanos=nanos)


def sign_tx(
    key: SigningKey,
    messages: Sequence[Message],
    *,
    chain_id: str,
    account_number: int,
    sequence: int = 0,
    unordered: bool = False,
    timeout_timestamp_ns: int | None = None,
    account_address: str | None = None,
    memo: str = "",
    gas_limit: int = DEFAULT_GAS_LIMIT,
    fee_amount: Sequence[Coin] = (),
    timeout_height: int = 0,
) -> SignedTx:
    """Build and sign one tx; the low-level form (``TxSigner`` picks the production defaults).

    ``account_address``: the participant account the messages act for; if it is set and differs from
    the key's own address, the messages are wrapped in ``MsgExec{grantee: key.address}``.
    An unordered tx needs ``timeout_timestamp_ns`` (the chain rejects it otherwise).
    """
    if not messages:
        raise ValueError("a tx needs at least one message")
    if unordered and timeout_timestamp_ns is None:
        raise ValueError("an unordered tx needs a timeout timestamp")
    if account_address is not None and account_address != key.address:
        messages = [wrap_in_exec(messages, grantee=key.address)]

    body = TxBody(messages=[pack_any(m) for m in messages], memo=memo, timeout_height=timeout_height)
    if unordered:
        body.unordered = True
    if timeout_timestamp_ns is not None:
        body.timeout_timestamp.CopyFrom(_timestamp(timeout_timestamp_ns))
    auth_info = AuthInfo(
        signer_infos=[
            SignerInfo(
                public_key=pack_any(PubKey(key=key.public_key)),
                mode_info=ModeInfo(single=ModeInfo.Single(mode=SIGN_MODE_DIRECT)),
                sequence=sequence,
            )
        ],
        fee=Fee(amount=list(fee_amount), gas_limit=gas_limit),
    )
    body_bytes = body.SerializeToString()
    auth_info_bytes = auth_info.SerializeToString()
    signature = key.sign(sign_doc_bytes(body_bytes, auth_info_bytes, chain_id, account_number))
    raw = TxRaw(body_bytes=body_bytes, auth_info_bytes=auth_info_bytes, signatures=[signature]).SerializeToString()
    return SignedTx(raw=raw, hash=tx_hash(raw), timeout_timestamp_ns=timeout_timestamp_ns)


class TxSigner:
    """Signs production txs for one signer key: unordered, fresh timeout, zero fee, authz when needed.

    Sign just before sending: the timeout starts counting at signing time.
    """

    def __init__(
        self,
        key: SigningKey,
        *,
        chain_id: str,
        account_number: int,
        account_address: str | None = None,
        gas_limit: int = DEFAULT_GAS_LIMIT,
        fee_amount: Sequence[Coin] = (),
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self.key = key
        self.chain_id = chain_id
        self.account_number = account_number
        self.account_address = account_address or key.address
        self.gas_limit = gas_limit
        self.fee_amount = tuple(fee_amount)
        self.timeout_ns = int(timeout_seconds * _NS_PER_SECOND)
        self._clock_ns = clock_ns

    @property
    def uses_authz(self) -> bool:
        return self.account_address != self.key.address

    def sign(self, messages: Sequence[Message], *, memo: str = "") -> SignedTx:
        timeout = unique_timeout_ns(self.key.address, self._clock_ns(), self.timeout_ns)
        return sign_tx(
            self.key,
            messages,
            chain_id=self.chain_id,
            account_number=self.account_number,
            sequence=0,
            unordered=True,
            timeout_timestamp_ns=timeout,
            account_address=self.account_address,
            memo=memo,
            gas_limit=self.gas_limit,
            fee_amount=self.fee_amount,
        )


# --------------------------------------------------------------------------------------------------
# Decoding and verification (used by the simulated chain)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EffectiveMessage:
    """A message the chain executes; ``grantee`` is set when it came inside a MsgExec (authz)."""

    type_url: str
    message: Message
    grantee: str | None = None


@dataclass(frozen=True, slots=True)
class DecodedTx:
    """A TxRaw taken apart, as the devnet chain checks it: body, auth info, signer, messages as sent and as run."""

    hash: str
    body_bytes: bytes
    auth_info_bytes: bytes
    body: TxBody
    auth_info: AuthInfo
    signatures: tuple[bytes, ...]
    messages: tuple[Message, ...]  # top-level, as packed (a MsgExec stays a MsgExec)
    effective_messages: tuple[EffectiveMessage, ...]  # MsgExec unwrapped one level
    signer_public_key: bytes
    signer_address: str
    sequence: int
    unordered: bool
    timeout_timestamp_ns: int | None
    gas_limit: int
    fee_amount: tuple[Coin, ...]


_M = TypeVar("_M", bound=Message)


def _parse(cls: type[_M], data: bytes, what: str) -> _M:
    try:
        return cls.FromString(data)
    except DecodeError as exc:
        raise TxDecodeError(f"malformed {what}: {exc}") from exc


def _unpack(packed: Any, where: str) -> tuple[str, Message]:
    try:
        return packed.type_url, unpack_any(packed)
    except (UnknownTypeUrl, DecodeError) as exc:
        raise TxDecodeError(f"{where}: {exc}") from exc


def decode_tx(raw: bytes) -> DecodedTx:
    """Decode TxRaw bytes; raises TxDecodeError for anything CheckTx would reject as undecodable."""
    tx_raw = _parse(TxRaw, raw, "TxRaw")
    body = _parse(TxBody, tx_raw.body_bytes, "TxBody")
    auth_info = _parse(AuthInfo, tx_raw.auth_info_bytes, "AuthInfo")

    if not body.messages:
        raise TxDecodeError("tx has no messages")
    if len(auth_info.signer_infos) != 1 or len(tx_raw.signatures) != 1:
        raise TxDecodeError(
            f"expected exactly one signer, got {len(auth_info.signer_infos)} signer infos "
            f"and {len(tx_raw.signatures)} signatures"
        )
    signer_info = auth_info.signer_infos[0]
    if not signer_info.mode_info.HasField("single") or signer_info.mode_info.single.mode != SIGN_MODE_DIRECT:
        raise TxDecodeError("only SIGN_MODE_DIRECT single signatures are supported")
    if signer_info.public_key.type_url != _PUBKEY_TYPE_URL:
        raise TxDecodeError(f"unsupported public key type {signer_info.public_key.type_url!r}")
    _, pubkey = _unpack(signer_info.public_key, "signer public key")
    assert isinstance(pubkey, PubKey)
    try:
        signer_address = address_from_public_key(pubkey.key)
    except ValueError as exc:
        raise TxDecodeError(f"signer public key: {exc}") from exc

    top: list[Message] = []
    effective: list[EffectiveMessage] = []
    for index, packed in enumerate(body.messages):
        type_url, message = _unpack(packed, f"message {index}")
        top.append(message)
        if type_url == _MSG_EXEC_TYPE_URL:
            assert isinstance(message, MsgExec)
            if not message.msgs:
                raise TxDecodeError(f"message {index}: MsgExec without messages")
            for inner_index, inner in enumerate(message.msgs):
                inner_url, inner_msg = _unpack(inner, f"message {index}.{inner_index}")
                effective.append(EffectiveMessage(inner_url, inner_msg, grantee=message.grantee))
        else:
            effective.append(EffectiveMessage(type_url, message))

    timeout_ns: int | None = None
    if body.HasField("timeout_timestamp"):
        timeout_ns = body.timeout_timestamp.seconds * _NS_PER_SECOND + body.timeout_timestamp.nanos
    return DecodedTx(
        hash=tx_hash(raw),
        body_bytes=tx_raw.body_bytes,
        auth_info_bytes=tx_raw.auth_info_bytes,
        body=body,
        auth_info=auth_info,
        signatures=tuple(tx_raw.signatures),
        messages=tuple(top),
        effective_messages=tuple(effective),
        signer_public_key=pubkey.key,
        signer_address=signer_address,
        sequence=signer_info.sequence,
        unordered=body.unordered,
        timeout_timestamp_ns=timeout_ns,
        gas_limit=auth_info.fee.gas_limit,
        fee_amount=tuple(auth_info.fee.amount),
    )


def verify_tx_signature(
    raw: bytes | DecodedTx, chain_id: str, account_number: int, *, public_key: bytes | None = None
) -> bool:
    """True iff the tx's signature is valid for this chain id and account number.

    By default the key is the one the tx itself carries; pass the account's stored ``public_key`` to
    also require that the tx was signed by that account. Undecodable bytes are simply not valid.
    """
    try:
        tx = raw if isinstance(raw, DecodedTx) else decode_tx(raw)
    except TxDecodeError:
        return False
    key = tx.signer_public_key
    if public_key is not None and public_key != key:
        return False
    doc = sign_doc_bytes(tx.body_bytes, tx.auth_info_bytes, chain_id, account_number)
    return verify_signature(key, doc, tx.signatures[0])
