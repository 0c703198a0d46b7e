"""secp256k1 keys for gonka accounts: parsing secrets, BIP39/BIP32 derivation, addresses, signatures.

Signatures follow the Cosmos SDK secp256k1 convention: 64-byte ``r || s`` over ``sha256(message)``,
deterministic nonces (RFC 6979, done by libsecp256k1 inside coincurve) and low-S only, because the
chain's verifier rejects the high-S twin of a valid signature as malleable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import unicodedata
from functools import cache
from importlib import resources

import bech32
import coincurve
from coincurve.ecdsa import cdata_to_der, deserialize_compact

from dapi.chain.ripemd160 import ripemd160

__all__ = [
    "DEFAULT_HD_PATH",
    "SigningKey",
    "address_from_base64_public_key",
    "address_from_public_key",
    "derive_bip32",
    "mnemonic_to_seed",
    "public_key_from_base64",
    "public_key_from_hex",
    "ripemd160",
    "verify_signature",
]

# Gonka registers SLIP-44 coin type 1200; `inferenced keys add` derives at this path by default.
DEFAULT_HD_PATH = "m/44'/1200'/0'/0/0"
ADDRESS_PREFIX = "gonka"

# Order of the secp256k1 group (SEC 2, §2.4.1).
_CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_ORDER = _CURVE_ORDER // 2
_HARDENED = 0x80000000
_COMPRESSED_PUBKEY_LEN = 33
_MNEMONIC_WORD_COUNTS = (12, 15, 18, 21, 24)
_WORDLIST_FILE = "bip39_english.txt"
_UNRECOGNISED_SECRET = (
    "signing key secret is neither a hex private key (64 hex characters) nor a BIP39 mnemonic (12-24 words)"
)


# --------------------------------------------------------------------------------------------------
# Public keys and addresses
# --------------------------------------------------------------------------------------------------


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _validate_compressed_point(key: bytes, what: str) -> bytes:
    if len(key) != _COMPRESSED_PUBKEY_LEN:
        expected = f"a {_COMPRESSED_PUBKEY_LEN}-byte compressed secp256k1 public key"
        raise ValueError(f"{what} must be {expected}, got {len(key)} bytes")
    if key[0] not in (0x02, 0x03):
        problem = f"prefix {key[0]:02x}, expected 02 or 03"
        raise ValueError(f"{what} is not a compressed secp256k1 public key ({problem})")
    try:
        coincurve.PublicKey(key)
    except ValueError:
        raise ValueError(f"{what} is not a point on the secp256k1 curve") from None
    return key


def address_from_public_key(public_key: bytes, hrp: str = ADDRESS_PREFIX) -> str:
    """Cosmos account address: bech32(hrp, ripemd160(sha256(compressed pubkey)))."""
    if len(public_key) != _COMPRESSED_PUBKEY_LEN:
        raise ValueError(
            f"public key must be {_COMPRESSED_PUBKEY_LEN} bytes (compressed secp256k1), got {len(public_key)}"
        )
    return address_from_key_bytes(public_key, hrp)


def address_from_key_bytes(key_bytes: bytes, hrp: str = ADDRESS_PREFIX) -> str:
    """The same hash without the length check: the reference derives the prover's address this way from
    whatever hex an ML node reports, and real ML nodes' test payloads carry short keys."""
    digest = ripemd160(hashlib.sha256(key_bytes).digest())
    five_bit = bech32.convertbits(digest, 8, 5)
    if five_bit is None:  # pragma: no cover - convertbits only fails on out-of-range input bytes
        raise ValueError("could not convert address bytes to bech32 groups")
    return bech32.bech32_encode(hrp, five_bit)


def public_key_from_base64(b64: str) -> bytes:
    """Decode the account public key from config (base64 of the 33-byte compressed point)."""
    try:
        raw = base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("account public key is not valid base64") from None
    return _validate_compressed_point(raw, "account public key")


def address_from_base64_public_key(b64: str, hrp: str = ADDRESS_PREFIX) -> str:
    return address_from_public_key(public_key_from_base64(b64), hrp)


def public_key_from_hex(hex_str: str) -> bytes:
    """Decode a hex public key (as PoC identifies participants) and check it is a compressed point."""
    text = _strip_0x(hex_str.strip())
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError("public key is not valid hex") from None
    return _validate_compressed_point(raw, "public key")


# --------------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------------


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Check a 64-byte ``r || s`` signature over sha256(message), accepting low-S only.

    Returns False rather than raising for malformed keys or signatures: they usually arrive from
    other participants, and a bad one is simply not a valid signature.
    """
    if len(signature) != 64 or len(public_key) != _COMPRESSED_PUBKEY_LEN:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    # libsecp256k1 also refuses high S, but checking here keeps the rule visible and independent.
    if not (0 < r < _CURVE_ORDER and 0 < s <= _HALF_ORDER):
        return False
    try:
        point = coincurve.PublicKey(public_key)
        der = cdata_to_der(deserialize_compact(signature))
        return bool(point.verify(der, message, hasher=_sha256))
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------------
# BIP39 and BIP32
# --------------------------------------------------------------------------------------------------


@cache
def _english_wordlist() -> dict[str, int]:
    text = resources.files(__package__ or __name__).joinpath(_WORDLIST_FILE).read_text(encoding="utf-8")
    words = text.split()
    index = {word: i for i, word in enumerate(words)}
    if len(words) != 2048 or len(index) != 2048:
        raise RuntimeError(f"{_WORDLIST_FILE} is corrupt: expected 2048 distinct words")
    return index


def _mnemonic_words(mnemonic: str) -> list[str]:
    # Wallets emit lowercase words separated by single spaces; accept sloppier input but hash
    # the canonical form so the seed matches the one the generating wallet computed.
    return unicodedata.normalize("NFKD", mnemonic).lower().split()


def _mnemonic_entropy(mnemonic: str) -> bytes:
    """Return the entropy encoded by an English BIP39 mnemonic, checking words and checksum.

    Error messages give word positions, never the words: they are part of a secret.
    """
    words = _mnemonic_words(mnemonic)
    if len(words) not in _MNEMONIC_WORD_COUNTS:
        raise ValueError(f"BIP39 mnemonic must have 12, 15, 18, 21 or 24 words, got {len(words)}")
    wordlist = _english_wordlist()
    bits = 0
    for position, word in enumerate(words, start=1):
        idx = wordlist.get(word)
        if idx is None:
            raise ValueError(f"BIP39 mnemonic word #{position} is not in the English word list")
        bits = (bits << 11) | idx
    total_bits = 11 * len(words)
    checksum_bits = total_bits // 33
    entropy_bits = total_bits - checksum_bits
    entropy = (bits >> checksum_bits).to_bytes(entropy_bits // 8, "big")
    checksum = bits & ((1 << checksum_bits) - 1)
    if hashlib.sha256(entropy).digest()[0] >> (8 - checksum_bits) != checksum:
        raise ValueError("BIP39 mnemonic checksum does not match (mistyped or reordered word?)")
    return entropy


def mnemonic_to_seed(mnemonic: str, passphrase: str = "") -> bytes:
    """BIP39 seed: PBKDF2-HMAC-SHA512(NFKD(mnemonic), "mnemonic" + NFKD(passphrase), 2048) -> 64 bytes.

    Words are lowercased and re-joined with single spaces first (see `_mnemonic_words`). The
    checksum is not checked here, since BIP39 defines the seed for any sentence; SigningKey checks it.
    """
    sentence = " ".join(_mnemonic_words(mnemonic))
    salt = "mnemonic" + unicodedata.normalize("NFKD", passphrase)
    return hashlib.pbkdf2_hmac("sha512", sentence.encode("utf-8"), salt.encode("utf-8"), 2048)


def _parse_path(path: str) -> list[int]:
    parts = path.strip().split("/")
    if parts[0] != "m":
        raise ValueError(f"BIP32 path {path!r} must start with 'm'")
    indices: list[int] = []
    for part in parts[1:]:
        hardened = part.endswith(("'", "h", "H"))
        digits = part[:-1] if hardened else part
        if not digits.isdecimal() or not digits.isascii():
            raise ValueError(f"BIP32 path {path!r} has an invalid component {part!r}")
        number = int(digits)
        if number >= _HARDENED:
            raise ValueError(f"BIP32 path {path!r} component {part!r} is not below 2^31")
        indices.append(number + _HARDENED if hardened else number)
    return indices


def _compressed_public_key(secret: bytes) -> bytes:
    return coincurve.PrivateKey(secret).public_key.format(compressed=True)


def derive_bip32(seed: bytes, path: str) -> bytes:
    """Derive the 32-byte private key at a BIP32 path (``'``, ``h`` or ``H`` mark hardened steps)."""
    if not 16 <= len(seed) <= 64:
        raise ValueError(f"BIP32 seed must be 16 to 64 bytes, got {len(seed)}")
    indices = _parse_path(path)
    digest = hmac.digest(b"Bitcoin seed", seed, "sha512")
    key, chain_code = int.from_bytes(digest[:32], "big"), digest[32:]
    if not 0 < key < _CURVE_ORDER:
        raise ValueError("BIP32 seed yields an invalid master key; use another seed")
    for index in indices:
        key_bytes = key.to_bytes(32, "big")
        if index >= _HARDENED:
            data = b"\x00" + key_bytes + index.to_bytes(4, "big")
        else:
            data = _compressed_public_key(key_bytes) + index.to_bytes(4, "big")
        digest = hmac.digest(chain_code, data, "sha512")
        tweak = int.from_bytes(digest[:32], "big")
        child = (tweak + key) % _CURVE_ORDER
        # BIP32 says to skip to the next index here; with odds below 2^-127 we refuse instead of
        # silently deriving a key at a different path than the caller asked for.
        if tweak >= _CURVE_ORDER or child == 0:
            raise ValueError(f"BIP32 derivation hit an invalid child at index {index}")
        key, chain_code = child, digest[32:]
    return key.to_bytes(32, "big")


# --------------------------------------------------------------------------------------------------
# Signing key
# --------------------------------------------------------------------------------------------------


def _strip_0x(text: str) -> str:
    return text[2:] if text[:2] in ("0x", "0X") else text


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdefABCDEF" for c in text)


class SigningKey:
    """A secp256k1 private key with its gonka address; signs Cosmos SIGN_MODE_DIRECT sign docs."""

    __slots__ = ("_key", "address", "public_key", "public_key_hex")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError(f"private key must be 32 bytes, got {len(secret)}")
        if not 0 < int.from_bytes(secret, "big") < _CURVE_ORDER:
            raise ValueError("private key is out of range (zero or not below the secp256k1 group order)")
        self._key = coincurve.PrivateKey(secret)
        self.public_key: bytes = self._key.public_key.format(compressed=True)
        self.public_key_hex: str = self.public_key.hex()
        self.address: str = address_from_public_key(self.public_key)

    @classmethod
    def from_hex(cls, hex_key: str) -> SigningKey:
        text = _strip_0x(hex_key.strip())
        if not _is_hex(text):
            raise ValueError("private key is not valid hex")
        if len(text) != 64:
            raise ValueError(f"hex private key must be 64 hex characters (32 bytes), got {len(text)}")
        return cls(bytes.fromhex(text))

    @classmethod
    def from_mnemonic(cls, mnemonic: str, passphrase: str = "", path: str = DEFAULT_HD_PATH) -> SigningKey:
        _mnemonic_entropy(mnemonic)
        return cls(derive_bip32(mnemonic_to_seed(mnemonic, passphrase), path))

    @classmethod
    def parse(cls, secret: str) -> SigningKey:
        """Accept either a hex private key or a BIP39 mnemonic (default gonka path, no passphrase)."""
        tokens = secret.split()
        if not tokens:
            raise ValueError("signing key secret is empty")
        if len(tokens) > 1:
            return cls.from_mnemonic(secret)
        if _is_hex(_strip_0x(tokens[0])):
            return cls.from_hex(tokens[0])
        raise ValueError(_UNRECOGNISED_SECRET)

    @property
    def private_key_bytes(self) -> bytes:
        return bytes(self._key.secret)

    def sign(self, message: bytes) -> bytes:
        """64-byte ``r || s`` over sha256(message), deterministic (RFC 6979) and low-S."""
        recoverable = self._key.sign_recoverable(message, hasher=_sha256)
        r, s = recoverable[:32], int.from_bytes(recoverable[32:64], "big")
        # libsecp256k1 already normalises S; this guards the chain's low-S rule against a library change.
        if s > _HALF_ORDER:
            s = _CURVE_ORDER - s
        return r + s.to_bytes(32, "big")

    def __repr__(self) -> str:
        return f"SigningKey(address={self.address!r})"
