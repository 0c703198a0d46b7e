"""The three signatures of an inference request and the exact bytes each one covers (reference/inference.md §6).

One request carries three secp256k1 signatures, each base64 of the 64-byte low-S ``r‖s`` over
sha256 of its signed bytes (RFC 6979, as every gonka key signs):

* the **developer** (client) signature, sent as ``Authorization`` and used as the inference id:
  ``payload ‖ dec(timestamp_ns) ‖ transfer_address``;
* the **transfer agent** (TA) signature: ``payload ‖ dec(timestamp_ns) ‖ transfer_address ‖ executor_address``;
* the **executor** signature: the same bytes as the TA's, signed with the executor's key.

``payload`` depends on the client scheme (DESIGN.md §8 accepts both):

* ``ClientScheme.RAW``: the request body byte for byte (gonka-openai ≤ 0.2.3, the reference dAPI and chain);
* ``ClientScheme.SHA256_HEX``: the lowercase hex of sha256(body), 64 ASCII bytes (gonka-openai ≥ 0.2.4).

Verification tries both schemes and reports which one matched; signing takes the scheme explicitly.
Everything here is pure and shared by the daemon (TA and executor checks) and the devnet chain
(MsgStartInference / MsgFinishInference key checks, inference.md §2.2-2.3).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from enum import Enum

from dapi.chain.keys import SigningKey, verify_signature

__all__ = [
    "SIGNATURE_LENGTH",
    "ClientScheme",
    "decode_signature",
    "dev_signed_bytes",
    "executor_signed_bytes",
    "sign",
    "ta_signed_bytes",
    "verify",
    "verify_dev_signature",
    "verify_ta_signature",
]

SIGNATURE_LENGTH = 64


class ClientScheme(Enum):
    """How the request body enters the signed bytes: as it is, or as the hex of its sha256."""

    RAW = "raw"
    SHA256_HEX = "sha256-hex"


def _payload(body: bytes, scheme: ClientScheme) -> bytes:
    if scheme is ClientScheme.SHA256_HEX:
        return hashlib.sha256(body).hexdigest().encode("ascii")
    return body


def dev_signed_bytes(
    body: bytes, timestamp_ns: int, transfer_address: str, scheme: ClientScheme = ClientScheme.RAW
) -> bytes:
    """What the developer signs: payload ‖ decimal timestamp (ns) ‖ transfer agent address."""
    return _payload(body, scheme) + str(timestamp_ns).encode("ascii") + transfer_address.encode("utf-8")


def ta_signed_bytes(
    body: bytes,
    timestamp_ns: int,
    transfer_address: str,
    executor_address: str,
    scheme: ClientScheme = ClientScheme.RAW,
) -> bytes:
    """What the transfer agent signs: the developer's bytes followed by the executor's address."""
    return dev_signed_bytes(body, timestamp_ns, transfer_address, scheme) + executor_address.encode("utf-8")


# The executor signs exactly the transfer agent's bytes (inference.md §2.3, §5.5).
executor_signed_bytes = ta_signed_bytes


def sign(key: SigningKey, signed_bytes: bytes) -> str:
    """Base64 of the 64-byte ``r‖s`` signature over sha256(signed_bytes)."""
    return base64.b64encode(key.sign(signed_bytes)).decode("ascii")


def decode_signature(signature_b64: str) -> bytes | None:
    """The 64 signature bytes of a base64 string, or None when it is not strict base64 of exactly 64 bytes."""
    try:
        raw = base64.b64decode(signature_b64.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    return raw if len(raw) == SIGNATURE_LENGTH else None


def verify(public_keys: Iterable[bytes], signed_bytes: bytes, signature_b64: str) -> bool:
    """True when any of `public_keys` made `signature_b64` over `signed_bytes` (never raises on bad input)."""
    signature = decode_signature(signature_b64)
    if signature is None:
        return False
    return any(verify_signature(key, signed_bytes, signature) for key in public_keys)


def verify_dev_signature(
    public_key: bytes, body: bytes, timestamp_ns: int, transfer_address: str, signature_b64: str
) -> ClientScheme | None:
    """The scheme under which the developer's signature is valid, or None if it is valid under neither."""
    for scheme in ClientScheme:
        if verify((public_key,), dev_signed_bytes(body, timestamp_ns, transfer_address, scheme), signature_b64):
            return scheme
    return None


def verify_ta_signature(
    public_keys: Iterable[bytes],
    body: bytes,
    timestamp_ns: int,
    transfer_address: str,
    executor_address: str,
    signature_b64: str,
) -> ClientScheme | None:
    """The scheme under which a TA (or executor) signature is valid for any of the keys, or None.

    The reference signs the raw body here; the sha256-hex form is accepted too, so a request is judged
    the same way whichever scheme its client used.
    """
    keys = tuple(public_keys)
    for scheme in ClientScheme:
        signed = ta_signed_bytes(body, timestamp_ns, transfer_address, executor_address, scheme)
        if verify(keys, signed, signature_b64):
            return scheme
    return None
