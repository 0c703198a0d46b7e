"""Type URLs of the chain messages we send or accept, and packing them into `google.protobuf.Any`.

Cosmos SDK type URLs are "/" + the message's full protobuf name ("/inference.inference.MsgSubmitPocBatch");
the chain rejects the "type.googleapis.com/" prefix that `Any.Pack` uses by default, so packing goes
through `pack_any` only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from google.protobuf.any_pb2 import Any
from google.protobuf.message import DecodeError, Message

from dapi.gen.cosmos.auth.v1beta1 import auth_pb2
from dapi.gen.cosmos.authz.v1beta1 import authz_pb2
from dapi.gen.cosmos.authz.v1beta1 import tx_pb2 as authz_tx_pb2
from dapi.gen.cosmos.crypto.secp256k1 import keys_pb2
from dapi.gen.inference.inference import tx_pb2 as inference_tx_pb2

TYPE_URL_PREFIX = "/"


class UnknownTypeUrl(ValueError):
    """An Any carries a type URL that is not in the registry."""

    def __init__(self, type_url: str) -> None:
        super().__init__(f"unknown message type URL {type_url!r}")
        self.type_url = type_url


def type_url_of(message: Message | type[Message]) -> str:
    return TYPE_URL_PREFIX + message.DESCRIPTOR.full_name


def _registry(classes: Iterable[type[Message]]) -> Mapping[str, type[Message]]:
    return MappingProxyType({type_url_of(cls): cls for cls in classes})


# Transaction messages the daemon sends (and the devnet ledger executes), their responses (which come
# back packed in TxMsgData.msg_responses), and the non-message Any payloads of tx and account
# handling (public key, account, authz grant).
REGISTRY: Mapping[str, type[Message]] = _registry(
    [
        inference_tx_pb2.MsgSubmitPocBatch,
        inference_tx_pb2.MsgSubmitPocBatchResponse,
        inference_tx_pb2.MsgSubmitPocValidation,
        inference_tx_pb2.MsgSubmitPocValidationResponse,
        inference_tx_pb2.MsgSubmitHardwareDiff,
        inference_tx_pb2.MsgSubmitHardwareDiffResponse,
        inference_tx_pb2.MsgSubmitSeed,
        inference_tx_pb2.MsgSubmitSeedResponse,
        inference_tx_pb2.MsgClaimRewards,
        inference_tx_pb2.MsgClaimRewardsResponse,
        inference_tx_pb2.MsgStartInference,
        inference_tx_pb2.MsgStartInferenceResponse,
        inference_tx_pb2.MsgFinishInference,
        inference_tx_pb2.MsgFinishInferenceResponse,
        inference_tx_pb2.MsgValidation,
        inference_tx_pb2.MsgValidationResponse,
        authz_tx_pb2.MsgExec,
        authz_tx_pb2.MsgExecResponse,
        authz_tx_pb2.MsgGrant,
        authz_tx_pb2.MsgGrantResponse,
        authz_tx_pb2.MsgRevoke,
        authz_tx_pb2.MsgRevokeResponse,
        authz_pb2.GenericAuthorization,
        keys_pb2.PubKey,
        auth_pb2.BaseAccount,
        auth_pb2.ModuleAccount,
    ]
)

# The inference messages a participant's signer key may send through authz on the account's behalf
# (a subset of the chain's InferenceOperationKeyPerms: the ones this daemon sends).
INFERENCE_MSG_TYPE_URLS: tuple[str, ...] = tuple(
    type_url_of(cls)
    for cls in (
        inference_tx_pb2.MsgSubmitPocBatch,
        inference_tx_pb2.MsgSubmitPocValidation,
        inference_tx_pb2.MsgSubmitHardwareDiff,
        inference_tx_pb2.MsgSubmitSeed,
        inference_tx_pb2.MsgClaimRewards,
        inference_tx_pb2.MsgStartInference,
        inference_tx_pb2.MsgFinishInference,
        inference_tx_pb2.MsgValidation,
    )
)


def message_class(type_url: str) -> type[Message]:
    try:
        return REGISTRY[type_url]
    except KeyError:
        raise UnknownTypeUrl(type_url) from None


def pack_any(message: Message) -> Any:
    """Wrap `message` in an Any with the Cosmos "/" type URL prefix."""
    return Any(type_url=type_url_of(message), value=message.SerializeToString())


def unpack_any(packed: Any) -> Message:
    """Decode a registered message from an Any.

    Raises UnknownTypeUrl for an unregistered type URL and DecodeError for bytes that are not a
    valid encoding of the named type.
    """
    cls = message_class(packed.type_url)
    message = cls()
    try:
        message.ParseFromString(packed.value)
    except DecodeError as exc:
        raise DecodeError(f"{packed.type_url}: {exc}") from exc
    return message
