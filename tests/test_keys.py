"""Keys: golden gonka key, BIP32/BIP39 published vectors, RIPEMD-160, signatures, bad input."""

from __future__ import annotations

import base64
import hashlib
import re

import coincurve
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dapi.chain import keys
from dapi.chain import ripemd160 as rmd160
from dapi.chain.keys import (
    SigningKey,
    address_from_base64_public_key,
    address_from_public_key,
    derive_bip32,
    mnemonic_to_seed,
    public_key_from_base64,
    public_key_from_hex,
    ripemd160,
    verify_signature,
)

CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

# --------------------------------------------------------------------------------------------------
# Golden key and transaction (DESIGN.md §3)
# --------------------------------------------------------------------------------------------------

GOLDEN_PRIVATE_KEY = "a6703374c8c14829bccb1eb13ecdb1ae7703d9e8b3e0a7f44b94bdfcebb0be32"
GOLDEN_ADDRESS = "gonka1helduaxd0n4q3mp6w8f5vt8x2u6t9whf74jpwe"
GOLDEN_PUBKEY_HEX = "035b3d1462dc1577673d973161b7168dc17323339909078367c3b6426cceabfeda"
GOLDEN_CHAIN_ID = "gonka-testnet"
GOLDEN_ACCOUNT_NUMBER = 42
GOLDEN_TX_RAW_HEX = (
    "0a8f010a87010a262f696e666572656e63652e696e666572656e63652e4d73675375626d6974506f634261746368125d0a2c"
    "676f6e6b613168656c6475617864306e3471336d70367738663576743878327536743977686637346a70776510b9601a0362"
    "2d3122030102032a189a9999999999b93f9a9999999999c93f333333333333d33f32066e6f64652d31120365787012580a50"
    "0a460a1f2f636f736d6f732e63727970746f2e736563703235366b312e5075624b657912230a21035b3d1462dc1577673d97"
    "3161b7168dc17323339909078367c3b6426cceabfeda12040a0208011807120410c09a0c1a400ad21df377c958c0f87a980e"
    "7ea0a1447ecaa4ef819160c3675f8ece3f96b43971b5a24e7e64a203f686da006951814581f797b9c3c012e7cca190f187af"
    "33b3"
)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited_fields(data: bytes) -> dict[int, list[bytes]]:
    """Just enough protobuf to split TxRaw, whose fields are all bytes (wire type 2)."""
    fields: dict[int, list[bytes]] = {}
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        assert tag & 7 == 2, "TxRaw has only length-delimited fields"
        length, pos = _read_varint(data, pos)
        fields.setdefault(tag >> 3, []).append(data[pos : pos + length])
        pos += length
    return fields


def _golden_sign_doc_and_signature() -> tuple[bytes, bytes]:
    tx_raw = _length_delimited_fields(bytes.fromhex(GOLDEN_TX_RAW_HEX))
    body, auth_info, [signature] = tx_raw[1][0], tx_raw[2][0], tx_raw[3]
    chain_id = GOLDEN_CHAIN_ID.encode()
    # SignDoc{1 body_bytes, 2 auth_info_bytes, 3 chain_id, 4 account_number (varint)}
    sign_doc = (
        b"\x0a" + _encode_varint(len(body)) + body
        + b"\x12" + _encode_varint(len(auth_info)) + auth_info
        + b"\x1a" + _encode_varint(len(chain_id)) + chain_id
        + b"\x20" + _encode_varint(GOLDEN_ACCOUNT_NUMBER)
    )  # fmt: skip
    return sign_doc, signature


def test_golden_key_has_design_address_and_pubkey() -> None:
    key = SigningKey.from_hex(GOLDEN_PRIVATE_KEY)
    assert key.address == GOLDEN_ADDRESS
    assert key.public_key_hex == GOLDEN_PUBKEY_HEX
    assert key.public_key == bytes.fromhex(GOLDEN_PUBKEY_HEX)
    assert key.private_key_bytes == bytes.fromhex(GOLDEN_PRIVATE_KEY)
    assert address_from_public_key(key.public_key) == GOLDEN_ADDRESS


def test_golden_pubkey_is_the_one_inside_the_golden_tx_raw() -> None:
    assert GOLDEN_PUBKEY_HEX in GOLDEN_TX_RAW_HEX


def test_golden_tx_signature_verifies_and_is_reproduced_byte_for_byte() -> None:
    sign_doc, signature = _golden_sign_doc_and_signature()
    key = SigningKey.from_hex(GOLDEN_PRIVATE_KEY)
    assert verify_signature(key.public_key, sign_doc, signature)
    # RFC 6979 makes signing deterministic, so our signature must equal the golden one exactly.
    assert key.sign(sign_doc) == signature


@pytest.mark.parametrize(
    "spelling",
    [
        GOLDEN_PRIVATE_KEY,
        "0x" + GOLDEN_PRIVATE_KEY,
        "0X" + GOLDEN_PRIVATE_KEY.upper(),
        f"  {GOLDEN_PRIVATE_KEY}\n",
    ],
)
def test_hex_key_spellings_all_parse_to_the_golden_key(spelling: str) -> None:
    assert SigningKey.from_hex(spelling).address == GOLDEN_ADDRESS
    assert SigningKey.parse(spelling).address == GOLDEN_ADDRESS


def test_repr_and_str_show_the_address_but_not_the_key() -> None:
    key = SigningKey.from_hex(GOLDEN_PRIVATE_KEY)
    for text in (repr(key), str(key), f"{key}"):
        assert GOLDEN_PRIVATE_KEY not in text.lower()
        assert GOLDEN_ADDRESS in text


def test_account_key_from_base64_config_value() -> None:
    b64 = base64.b64encode(bytes.fromhex(GOLDEN_PUBKEY_HEX)).decode()
    assert public_key_from_base64(b64) == bytes.fromhex(GOLDEN_PUBKEY_HEX)
    assert public_key_from_base64(f" {b64}\n") == bytes.fromhex(GOLDEN_PUBKEY_HEX)
    assert address_from_base64_public_key(b64) == GOLDEN_ADDRESS


def test_prover_pubkey_from_hex() -> None:
    assert public_key_from_hex(GOLDEN_PUBKEY_HEX) == bytes.fromhex(GOLDEN_PUBKEY_HEX)
    assert public_key_from_hex("0x" + GOLDEN_PUBKEY_HEX.upper()) == bytes.fromhex(GOLDEN_PUBKEY_HEX)


def test_address_prefix_is_a_parameter() -> None:
    pub = bytes.fromhex(GOLDEN_PUBKEY_HEX)
    other = address_from_public_key(pub, hrp="cosmos")
    assert other.startswith("cosmos1")
    # Same 20-byte account id, so the data part differs only by the checksum.
    assert other[len("cosmos1") : -6] == GOLDEN_ADDRESS[len("gonka1") : -6]


# --------------------------------------------------------------------------------------------------
# BIP32 test vectors 1 and 2 (bitcoin/bips, bip-0032.mediawiki, "Test Vectors"), extended private
# keys copied verbatim. We compare the 32-byte key inside each xprv, and the xpub's public key.
# --------------------------------------------------------------------------------------------------

BIP32_VECTOR_1_SEED = "000102030405060708090a0b0c0d0e0f"
BIP32_VECTOR_2_SEED = (
    "fffcf9f6f3f0edeae7e4e1dedbd8d5d2cfccc9c6c3c0bdbab7b4b1aeaba8a5a2"
    "9f9c999693908d8a8784817e7b7875726f6c696663605d5a5754514e4b484542"
)

BIP32_VECTORS = [
    # (seed, path, ext pub, ext prv)
    (
        BIP32_VECTOR_1_SEED,
        "m",
        "xpub661MyMwAqRbcFtXgS5sYJABqqG9YLmC4Q1Rdap9gSE8NqtwybGhePY2gZ29ESFjqJoCu1Rupje8YtGqsefD265TMg7usUDFdp6W1EGMcet8",
        "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33yuGBxrMPHi",
    ),
    (
        BIP32_VECTOR_1_SEED,
        "m/0H",
        "xpub68Gmy5EdvgibQVfPdqkBBCHxA5htiqg55crXYuXoQRKfDBFA1WEjWgP6LHhwBZeNK1VTsfTFUHCdrfp1bgwQ9xv5ski8PX9rL2dZXvgGDnw",
        "xprv9uHRZZhk6KAJC1avXpDAp4MDc3sQKNxDiPvvkX8Br5ngLNv1TxvUxt4cV1rGL5hj6KCesnDYUhd7oWgT11eZG7XnxHrnYeSvkzY7d2bhkJ7",
    ),
    (
        BIP32_VECTOR_1_SEED,
        "m/0H/1",
        "xpub6ASuArnXKPbfEwhqN6e3mwBcDTgzisQN1wXN9BJcM47sSikHjJf3UFHKkNAWbWMiGj7Wf5uMash7SyYq527Hqck2AxYysAA7xmALppuCkwQ",
        "xprv9wTYmMFdV23N2TdNG573QoEsfRrWKQgWeibmLntzniatZvR9BmLnvSxqu53Kw1UmYPxLgboyZQaXwTCg8MSY3H2EU4pWcQDnRnrVA1xe8fs",
    ),
    (
        BIP32_VECTOR_1_SEED,
        "m/0H/1/2H",
        "xpub6D4BDPcP2GT577Vvch3R8wDkScZWzQzMMUm3PWbmWvVJrZwQY4VUNgqFJPMM3No2dFDFGTsxxpG5uJh7n7epu4trkrX7x7DogT5Uv6fcLW5",
        "xprv9z4pot5VBttmtdRTWfWQmoH1taj2axGVzFqSb8C9xaxKymcFzXBDptWmT7FwuEzG3ryjH4ktypQSAewRiNMjANTtpgP4mLTj34bhnZX7UiM",
    ),
    (
        BIP32_VECTOR_1_SEED,
        "m/0H/1/2H/2",
        "xpub6FHa3pjLCk84BayeJxFW2SP4XRrFd1JYnxeLeU8EqN3vDfZmbqBqaGJAyiLjTAwm6ZLRQUMv1ZACTj37sR62cfN7fe5JnJ7dh8zL4fiyLHV",
        "xprvA2JDeKCSNNZky6uBCviVfJSKyQ1mDYahRjijr5idH2WwLsEd4Hsb2Tyh8RfQMuPh7f7RtyzTtdrbdqqsunu5Mm3wDvUAKRHSC34sJ7in334",
    ),
    (
        BIP32_VECTOR_1_SEED,
        "m/0H/1/2H/2/1000000000",
        "xpub6H1LXWLaKsWFhvm6RVpEL9P4KfRZSW7abD2ttkWP3SSQvnyA8FSVqNTEcYFgJS2UaFcxupHiYkro49S8yGasTvXEYBVPamhGW6cFJodrTHy",
        "xprvA41z7zogVVwxVSgdKUHDy1SKmdb533PjDz7J6N6mV6uS3ze1ai8FHa8kmHScGpWmj4WggLyQjgPie1rFSruoUihUZREPSL39UNdE3BBDu76",
    ),
    (
        BIP32_VECTOR_2_SEED,
        "m",
        "xpub661MyMwAqRbcFW31YEwpkMuc5THy2PSt5bDMsktWQcFF8syAmRUapSCGu8ED9W6oDMSgv6Zz8idoc4a6mr8BDzTJY47LJhkJ8UB7WEGuduB",
        "xprv9s21ZrQH143K31xYSDQpPDxsXRTUcvj2iNHm5NUtrGiGG5e2DtALGdso3pGz6ssrdK4PFmM8NSpSBHNqPqm55Qn3LqFtT2emdEXVYsCzC2U",
    ),
    (
        BIP32_VECTOR_2_SEED,
        "m/0",
        "xpub69H7F5d8KSRgmmdJg2KhpAK8SR3DjMwAdkxj3ZuxV27CprR9LgpeyGmXUbC6wb7ERfvrnKZjXoUmmDznezpbZb7ap6r1D3tgFxHmwMkQTPH",
        "xprv9vHkqa6EV4sPZHYqZznhT2NPtPCjKuDKGY38FBWLvgaDx45zo9WQRUT3dKYnjwih2yJD9mkrocEZXo1ex8G81dwSM1fwqWpWkeS3v86pgKt",
    ),
    (
        BIP32_VECTOR_2_SEED,
        "m/0/2147483647H",
        "xpub6ASAVgeehLbnwdqV6UKMHVzgqAG8Gr6riv3Fxxpj8ksbH9ebxaEyBLZ85ySDhKiLDBrQSARLq1uNRts8RuJiHjaDMBU4Zn9h8LZNnBC5y4a",
        "xprv9wSp6B7kry3Vj9m1zSnLvN3xH8RdsPP1Mh7fAaR7aRLcQMKTR2vidYEeEg2mUCTAwCd6vnxVrcjfy2kRgVsFawNzmjuHc2YmYRmagcEPdU9",
    ),
    (
        BIP32_VECTOR_2_SEED,
        "m/0/2147483647H/1",
        "xpub6DF8uhdarytz3FWdA8TvFSvvAh8dP3283MY7p2V4SeE2wyWmG5mg5EwVvmdMVCQcoNJxGoWaU9DCWh89LojfZ537wTfunKau47EL2dhHKon",
        "xprv9zFnWC6h2cLgpmSA46vutJzBcfJ8yaJGg8cX1e5StJh45BBciYTRXSd25UEPVuesF9yog62tGAQtHjXajPPdbRCHuWS6T8XA2ECKADdw4Ef",
    ),
    (
        BIP32_VECTOR_2_SEED,
        "m/0/2147483647H/1/2147483646H",
        "xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL",
        "xprvA1RpRA33e1JQ7ifknakTFpgNXPmW2YvmhqLQYMmrj4xJXXWYpDPS3xz7iAxn8L39njGVyuoseXzU6rcxFLJ8HFsTjSyQbLYnMpCqE2VbFWc",
    ),
    (
        BIP32_VECTOR_2_SEED,
        "m/0/2147483647H/1/2147483646H/2",
        "xpub6FnCn6nSzZAw5Tw7cgR9bi15UV96gLZhjDstkXXxvCLsUXBGXPdSnLFbdpq8p9HmGsApME5hQTZ3emM2rnY5agb9rXpVGyy3bdW6EEgAtqt",
        "xprvA2nrNbFZABcdryreWet9Ea4LvTJcGsqrMzxHx98MMrotbir7yrKCEXw7nadnHM8Dq38EGfSh6dqA9QWTyefMLEcBYJUuekgW4BYPJcr9E7j",
    ),
]

_BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _base58check_decode(text: str) -> bytes:
    number = 0
    for char in text:
        number = number * 58 + _BASE58_ALPHABET.index(char)
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    payload, checksum = raw[:-4], raw[-4:]
    assert hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] == checksum
    return payload


def _xprv_private_key(xprv: str) -> bytes:
    # version(4) depth(1) parent fingerprint(4) child number(4) chain code(32) 0x00 key(32)
    payload = _base58check_decode(xprv)
    assert len(payload) == 78 and payload[45] == 0
    return payload[46:]


def _xpub_public_key(xpub: str) -> bytes:
    payload = _base58check_decode(xpub)
    assert len(payload) == 78
    return payload[45:]


@pytest.mark.parametrize(("seed", "path", "xpub", "xprv"), BIP32_VECTORS)
def test_bip32_published_vectors(seed: str, path: str, xpub: str, xprv: str) -> None:
    private_key = derive_bip32(bytes.fromhex(seed), path)
    assert private_key == _xprv_private_key(xprv)
    assert coincurve.PrivateKey(private_key).public_key.format() == _xpub_public_key(xpub)


def test_bip32_hardened_markers_are_interchangeable() -> None:
    seed = bytes.fromhex(BIP32_VECTOR_2_SEED)
    expected = derive_bip32(seed, "m/0/2147483647H/1/2147483646H/2")
    assert derive_bip32(seed, "m/0/2147483647'/1/2147483646'/2") == expected
    assert derive_bip32(seed, "m/0/2147483647h/1/2147483646h/2") == expected


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("44'/0'", "must start with 'm'"),
        ("m/x", "invalid component"),
        ("m/1//2", "invalid component"),
        ("m/-1", "invalid component"),
        ("m/2147483648", "not below 2^31"),
        ("m/2147483648'", "not below 2^31"),
    ],
)
def test_bip32_rejects_malformed_paths(path: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        derive_bip32(bytes.fromhex(BIP32_VECTOR_1_SEED), path)


def test_bip32_rejects_seed_of_wrong_size() -> None:
    with pytest.raises(ValueError, match="seed must be 16 to 64 bytes"):
        derive_bip32(b"\x01" * 15, "m/0")
    with pytest.raises(ValueError, match="seed must be 16 to 64 bytes"):
        derive_bip32(b"\x01" * 65, "m/0")


# --------------------------------------------------------------------------------------------------
# BIP39: Trezor reference vectors (trezor/python-mnemonic vectors.json, "english", passphrase
# "TREZOR"), copied verbatim from the identical copy in bitcoinjs/bip39 test/vectors.json.
# --------------------------------------------------------------------------------------------------

TREZOR_PASSPHRASE = "TREZOR"
TREZOR_VECTORS = [
    # (entropy, mnemonic, seed)
    (
        "00000000000000000000000000000000",
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
        "c55257c360c07c72029aebc1b53c05ed0362ada38ead3e3e9efa3708e53495531f09a6987599d18264c1e1c92f2cf141630c7a3c4ab7c81b2f001698e7463b04",
    ),
    (
        "7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
        "legal winner thank year wave sausage worth useful legal winner thank yellow",
        "2e8905819b8723fe2c1d161860e5ee1830318dbf49a83bd451cfb8440c28bd6fa457fe1296106559a3c80937a1c1069be3a3a5bd381ee6260e8d9739fce1f607",
    ),
    (
        "80808080808080808080808080808080",
        "letter advice cage absurd amount doctor acoustic avoid letter advice cage above",
        "d71de856f81a8acc65e6fc851a38d4d7ec216fd0796d0a6827a3ad6ed5511a30fa280f12eb2e47ed2ac03b5c462a0358d18d69fe4f985ec81778c1b370b652a8",
    ),
    (
        "ffffffffffffffffffffffffffffffff",
        "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong",
        "ac27495480225222079d7be181583751e86f571027b0497b5b5d11218e0a8a13332572917f0f8e5a589620c6f15b11c61dee327651a14c34e18231052e48c069",
    ),
    (
        "000000000000000000000000000000000000000000000000",
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon agent",
        "035895f2f481b1b0f01fcf8c289c794660b289981a78f8106447707fdd9666ca06da5a9a565181599b79f53b844d8a71dd9f439c52a3d7b3e8a79c906ac845fa",
    ),
    (
        "7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
        "legal winner thank year wave sausage worth useful legal winner thank year wave sausage worth useful legal will",
        "f2b94508732bcbacbcc020faefecfc89feafa6649a5491b8c952cede496c214a0c7b3c392d168748f2d4a612bada0753b52a1c7ac53c1e93abd5c6320b9e95dd",
    ),
    (
        "808080808080808080808080808080808080808080808080",
        "letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic avoid letter always",
        "107d7c02a5aa6f38c58083ff74f04c607c2d2c0ecc55501dadd72d025b751bc27fe913ffb796f841c49b1d33b610cf0e91d3aa239027f5e99fe4ce9e5088cd65",
    ),
    (
        "ffffffffffffffffffffffffffffffffffffffffffffffff",
        "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo when",
        "0cd6e5d827bb62eb8fc1e262254223817fd068a74b5b449cc2f667c3f1f985a76379b43348d952e2265b4cd129090758b3e3c2c49103b5051aac2eaeb890a528",
    ),
    (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon art",
        "bda85446c68413707090a52022edd26a1c9462295029f2e60cd7c4f2bbd3097170af7a4d73245cafa9c3cca8d561a7c3de6f5d4a10be8ed2a5e608d68f92fcc8",
    ),
    (
        "7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
        "legal winner thank year wave sausage worth useful legal winner thank year wave sausage worth useful legal winner thank year wave sausage worth title",
        "bc09fca1804f7e69da93c2f2028eb238c227f2e9dda30cd63699232578480a4021b146ad717fbb7e451ce9eb835f43620bf5c514db0f8add49f5d121449d3e87",
    ),
    (
        "8080808080808080808080808080808080808080808080808080808080808080",
        "letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic bless",
        "c0c519bd0e91a2ed54357d9d1ebef6f5af218a153624cf4f2da911a0ed8f7a09e2ef61af0aca007096df430022f7a2b6fb91661a9589097069720d015e4e982f",
    ),
    (
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo vote",
        "dd48c104698c30cfe2b6142103248622fb7bb0ff692eebb00089b32d22484e1613912f0a5b694407be899ffd31ed3992c456cdf60f5d4564b8ba3f05a69890ad",
    ),
    (
        "77c2b00716cec7213839159e404db50d",
        "jelly better achieve collect unaware mountain thought cargo oxygen act hood bridge",
        "b5b6d0127db1a9d2226af0c3346031d77af31e918dba64287a1b44b8ebf63cdd52676f672a290aae502472cf2d602c051f3e6f18055e84e4c43897fc4e51a6ff",
    ),
    (
        "b63a9c59a6e641f288ebc103017f1da9f8290b3da6bdef7b",
        "renew stay biology evidence goat welcome casual join adapt armor shuffle fault little machine walk stumble urge swap",
        "9248d83e06f4cd98debf5b6f010542760df925ce46cf38a1bdb4e4de7d21f5c39366941c69e1bdbf2966e0f6e6dbece898a0e2f0a4c2b3e640953dfe8b7bbdc5",
    ),
    (
        "3e141609b97933b66a060dcddc71fad1d91677db872031e85f4c015c5e7e8982",
        "dignity pass list indicate nasty swamp pool script soccer toe leaf photo multiply desk host tomato cradle drill spread actor shine dismiss champion exotic",
        "ff7f3184df8696d8bef94b6c03114dbee0ef89ff938712301d27ed8336ca89ef9635da20af07d4175f2bf5f3de130f39c9d9e8dd0472489c19b1a020a940da67",
    ),
    (
        "0460ef47585604c5660618db2e6a7e7f",
        "afford alter spike radar gate glance object seek swamp infant panel yellow",
        "65f93a9f36b6c85cbe634ffc1f99f2b82cbb10b31edc7f087b4f6cb9e976e9faf76ff41f8f27c99afdf38f7a303ba1136ee48a4c1e7fcd3dba7aa876113a36e4",
    ),
    (
        "72f60ebac5dd8add8d2a25a797102c3ce21bc029c200076f",
        "indicate race push merry suffer human cruise dwarf pole review arch keep canvas theme poem divorce alter left",
        "3bbf9daa0dfad8229786ace5ddb4e00fa98a044ae4c4975ffd5e094dba9e0bb289349dbe2091761f30f382d4e35c4a670ee8ab50758d2c55881be69e327117ba",
    ),
    (
        "2c85efc7f24ee4573d2b81a6ec66cee209b2dcbd09d8eddc51e0215b0b68e416",
        "clutch control vehicle tonight unusual clog visa ice plunge glimpse recipe series open hour vintage deposit universe tip job dress radar refuse motion taste",
        "fe908f96f46668b2d5b37d82f558c77ed0d69dd0e7e043a5b0511c48c2f1064694a956f86360c93dd04052a8899497ce9e985ebe0c8c52b955e6ae86d4ff4449",
    ),
    (
        "eaebabb2383351fd31d703840b32e9e2",
        "turtle front uncle idea crush write shrug there lottery flower risk shell",
        "bdfb76a0759f301b0b899a1e3985227e53b3f51e67e3f2a65363caedf3e32fde42a66c404f18d7b05818c95ef3ca1e5146646856c461c073169467511680876c",
    ),
    (
        "7ac45cfe7722ee6c7ba84fbc2d5bd61b45cb2fe5eb65aa78",
        "kiss carry display unusual confirm curtain upgrade antique rotate hello void custom frequent obey nut hole price segment",
        "ed56ff6c833c07982eb7119a8f48fd363c4a9b1601cd2de736b01045c5eb8ab4f57b079403485d1c4924f0790dc10a971763337cb9f9c62226f64fff26397c79",
    ),
    (
        "4fa1a8bc3e6d80ee1316050e862c1812031493212b7ec3f3bb1b08f168cabeef",
        "exile ask congress lamp submit jacket era scheme attend cousin alcohol catch course end lucky hurt sentence oven short ball bird grab wing top",
        "095ee6f817b4c2cb30a5a797360a81a40ab0f9a4e25ecd672a3f58a0b5ba0687c096a6b14d2c0deb3bdefce4f61d01ae07417d502429352e27695163f7447a8c",
    ),
    (
        "18ab19a9f54a9274f03e5209a2ac8a91",
        "board flee heavy tunnel powder denial science ski answer betray cargo cat",
        "6eff1bb21562918509c73cb990260db07c0ce34ff0e3cc4a8cb3276129fbcb300bddfe005831350efd633909f476c45c88253276d9fd0df6ef48609e8bb7dca8",
    ),
    (
        "18a2e1d81b8ecfb2a333adcb0c17a5b9eb76cc5d05db91a4",
        "board blade invite damage undo sun mimic interest slam gaze truly inherit resist great inject rocket museum chief",
        "f84521c777a13b61564234bf8f8b62b3afce27fc4062b51bb5e62bdfecb23864ee6ecf07c1d5a97c0834307c5c852d8ceb88e7c97923c0a3b496bedd4e5f88a9",
    ),
    (
        "15da872c95a13dd738fbf50e427583ad61f18fd99f628c417a61cf8343c90419",
        "beyond stage sleep clip because twist token leaf atom beauty genius food business side grid unable middle armed observe pair crouch tonight away coconut",
        "b15509eaa2d09d3efd3e006ef42151b30367dc6e3aa5e44caba3fe4d3e352e65101fbdb86a96776b91946ff06f8eac594dc6ee1d3e82a42dfe1b40fef6bcc3fd",
    ),
]


@pytest.mark.parametrize(("entropy", "mnemonic", "seed"), TREZOR_VECTORS)
def test_bip39_trezor_vectors_seed(entropy: str, mnemonic: str, seed: str) -> None:
    assert mnemonic_to_seed(mnemonic, TREZOR_PASSPHRASE).hex() == seed


@pytest.mark.parametrize(("entropy", "mnemonic", "seed"), TREZOR_VECTORS)
def test_bip39_trezor_vectors_checksum_and_entropy(entropy: str, mnemonic: str, seed: str) -> None:
    assert keys._mnemonic_entropy(mnemonic).hex() == entropy
    # from_mnemonic must accept every valid vector and derive from exactly this seed.
    key = SigningKey.from_mnemonic(mnemonic, TREZOR_PASSPHRASE, path="m/0")
    assert key.private_key_bytes == derive_bip32(bytes.fromhex(seed), "m/0")


def test_bip39_word_list_is_the_published_english_list() -> None:
    # SHA-256 of bitcoin/bips bip-0039/english.txt; guards against a damaged or retyped copy.
    from importlib import resources

    data = resources.files("dapi.chain").joinpath("bip39_english.txt").read_bytes()
    assert hashlib.sha256(data).hexdigest() == "2f5eed53a4727b4bf8880d8f3f199efc90e58503646d9ff8eff3a2ed3b24dbda"


def test_mnemonic_whitespace_and_case_do_not_change_the_seed() -> None:
    mnemonic = TREZOR_VECTORS[1][1]
    sloppy = "  " + mnemonic.upper().replace(" ", " \t\n ") + "\n"
    assert mnemonic_to_seed(sloppy, TREZOR_PASSPHRASE) == mnemonic_to_seed(mnemonic, TREZOR_PASSPHRASE)
    assert SigningKey.from_mnemonic(sloppy).address == SigningKey.from_mnemonic(mnemonic).address


def test_mnemonic_passphrase_is_nfkd_normalised() -> None:
    # "é" precomposed (U+00E9) and decomposed (e + U+0301) must give one seed.
    mnemonic = TREZOR_VECTORS[0][1]
    assert mnemonic_to_seed(mnemonic, "caf\u00e9") == mnemonic_to_seed(mnemonic, "cafe\u0301")
    assert mnemonic_to_seed(mnemonic, "caf\u00e9") != mnemonic_to_seed(mnemonic, "cafe")


# Cosmos Hub account for the all-"abandon ... about" mnemonic at m/44'/118'/0'/0/0, empty passphrase:
# a widely published vector, asserted in several independent public Cosmos wallet test suites.
COSMOS_HUB_ABANDON_ADDRESS = "cosmos19rl4cm2hmr8afy4kldpxz3fka4jguq0auqdal4"


def test_mnemonic_to_cosmos_hub_address_end_to_end() -> None:
    key = SigningKey.from_mnemonic(TREZOR_VECTORS[0][1], path="m/44'/118'/0'/0/0")
    assert address_from_public_key(key.public_key, hrp="cosmos") == COSMOS_HUB_ABANDON_ADDRESS


def test_mnemonic_defaults_to_gonka_path_and_parse_accepts_mnemonics() -> None:
    mnemonic = TREZOR_VECTORS[0][1]
    expected = derive_bip32(mnemonic_to_seed(mnemonic), "m/44'/1200'/0'/0/0")
    assert SigningKey.from_mnemonic(mnemonic).private_key_bytes == expected
    parsed = SigningKey.parse(mnemonic)
    assert parsed.private_key_bytes == expected
    assert parsed.address.startswith("gonka1")


# --------------------------------------------------------------------------------------------------
# RIPEMD-160 vectors from the algorithm's authors (Dobbertin, Bosselaers, Preneel; the RIPEMD-160
# home page at homes.esat.kuleuven.be/~bosselae/ripemd160.html).
# --------------------------------------------------------------------------------------------------

RIPEMD160_VECTORS = [
    (b"", "9c1185a5c5e9fc54612808977ee8f548b2258d31"),
    (b"a", "0bdc9d2d256b3ee9daae347be6f4dc835a467ffe"),
    (b"abc", "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"),
    (b"message digest", "5d0689ef49d2fae572b881b123a85ffa21595f36"),
    (b"abcdefghijklmnopqrstuvwxyz", "f71c27109c692c1b56bbdceb5b9d2865b3708dbc"),
    (b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "12a053384a9c0c88e405a06c27dcf49ada62eb2b"),
    (
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        "b0e20b6e3116640286ed3a87a5713079b21f5189",
    ),
    (b"1234567890" * 8, "9b752e45573d4b39f4dbd3323cab82bf63326bfb"),
    (b"a" * 1_000_000, "52783243c1697bdbe16d37f97f68f08325dc1528"),
]


@pytest.mark.parametrize(("message", "digest"), RIPEMD160_VECTORS, ids=[d for _, d in RIPEMD160_VECTORS])
def test_ripemd160_pure_fallback_matches_published_vectors(message: bytes, digest: str) -> None:
    assert rmd160.ripemd160_pure(message).hex() == digest


@pytest.mark.parametrize(("message", "digest"), RIPEMD160_VECTORS[:-1])
def test_ripemd160_public_function_matches_published_vectors(message: bytes, digest: str) -> None:
    assert ripemd160(message).hex() == digest


def test_ripemd160_uses_fallback_when_openssl_lacks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rmd160, "_HAVE_OPENSSL_RIPEMD160", False)
    assert ripemd160(b"abc").hex() == "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"
    assert SigningKey.from_hex(GOLDEN_PRIVATE_KEY).address == GOLDEN_ADDRESS


@settings(max_examples=60)
@given(st.binary(max_size=300))
def test_ripemd160_fallback_agrees_with_openssl_across_padding_boundaries(data: bytes) -> None:
    try:
        reference = hashlib.new("ripemd160", data).digest()
    except ValueError:
        pytest.skip("this OpenSSL has no RIPEMD-160 to compare against")
    assert rmd160.ripemd160_pure(data) == reference


# --------------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------------

private_keys = st.integers(min_value=1, max_value=CURVE_ORDER - 1).map(lambda k: k.to_bytes(32, "big").hex())


@settings(max_examples=50, deadline=None)
@given(secret=private_keys, message=st.binary(max_size=512))
def test_sign_verify_round_trip_is_low_s_and_binds_key_and_message(secret: str, message: bytes) -> None:
    key = SigningKey.from_hex(secret)
    signature = key.sign(message)
    assert len(signature) == 64
    s = int.from_bytes(signature[32:], "big")
    assert 0 < s <= CURVE_ORDER // 2
    assert verify_signature(key.public_key, message, signature)
    assert key.sign(message) == signature  # deterministic (RFC 6979)
    assert not verify_signature(key.public_key, message + b"\x00", signature)
    other = SigningKey.from_hex(GOLDEN_PRIVATE_KEY if secret != GOLDEN_PRIVATE_KEY else "01".zfill(64))
    assert not verify_signature(other.public_key, message, signature)


@settings(max_examples=25, deadline=None)
@given(secret=private_keys, message=st.binary(max_size=64))
def test_verify_rejects_the_high_s_twin_of_a_valid_signature(secret: str, message: bytes) -> None:
    key = SigningKey.from_hex(secret)
    signature = key.sign(message)
    high_s = CURVE_ORDER - int.from_bytes(signature[32:], "big")
    # (r, n - s) is mathematically valid ECDSA; Cosmos refuses it to prevent malleability.
    assert not verify_signature(key.public_key, message, signature[:32] + high_s.to_bytes(32, "big"))


def test_verify_returns_false_for_malformed_input() -> None:
    sign_doc, signature = _golden_sign_doc_and_signature()
    pub = bytes.fromhex(GOLDEN_PUBKEY_HEX)
    assert not verify_signature(pub, sign_doc, signature[:63])
    assert not verify_signature(pub, sign_doc, signature + b"\x00")
    assert not verify_signature(pub, sign_doc, b"\x00" * 64)
    assert not verify_signature(pub, sign_doc, CURVE_ORDER.to_bytes(32, "big") + signature[32:])
    assert not verify_signature(pub[:32], sign_doc, signature)
    assert not verify_signature(b"\x02" + b"\xff" * 32, sign_doc, signature)


# --------------------------------------------------------------------------------------------------
# Bad input: ValueError naming the problem, never echoing the secret
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        (GOLDEN_PRIVATE_KEY[:-2], "64 hex characters"),
        (GOLDEN_PRIVATE_KEY + "00", "64 hex characters"),
        ("0x", "not valid hex"),
        (GOLDEN_PRIVATE_KEY[:-1] + "g", "not valid hex"),
        ("00" * 32, "out of range"),
        (CURVE_ORDER.to_bytes(32, "big").hex(), "out of range"),
        ("ff" * 32, "out of range"),
    ],
)
def test_from_hex_rejects_bad_keys(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        SigningKey.from_hex(secret)
    if len(secret) > 8:
        assert secret not in str(info.value)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("correct-horse-battery-staple", "neither a hex private key"),
        (GOLDEN_PRIVATE_KEY[:-1] + "z", "neither a hex private key"),
        (GOLDEN_PRIVATE_KEY[:40], "64 hex characters"),
        ("abandon " * 11 + "abandon", "checksum"),
        ("abandon " * 11 + "zzzzzz", "word #12 is not in the English word list"),
        ("abandon " * 10 + "about", "12, 15, 18, 21 or 24 words, got 11"),
        ("hunter2 swordfish", "got 2"),
    ],
)
def test_parse_rejects_bad_secrets_without_echoing_them(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        SigningKey.parse(secret)
    message = str(info.value)
    for fragment in secret.split():
        if len(fragment) > 4:
            assert fragment not in message


def test_mnemonic_with_swapped_words_fails_checksum() -> None:
    words = TREZOR_VECTORS[12][1].split()
    words[0], words[1] = words[1], words[0]
    with pytest.raises(ValueError, match="checksum"):
        SigningKey.from_mnemonic(" ".join(words))


GOLDEN_PUBKEY_B64 = base64.b64encode(bytes.fromhex(GOLDEN_PUBKEY_HEX)).decode()
# x = 5 has no square root of x^3 + 7 modulo p, so 02||x is not on secp256k1.
OFF_CURVE_PUBKEY = b"\x02" + (5).to_bytes(32, "big")


@pytest.mark.parametrize(
    ("b64", "problem"),
    [
        ("not base64!", "not valid base64"),
        (GOLDEN_PUBKEY_B64[:-1], "not valid base64"),
        ("", "33-byte compressed secp256k1 public key, got 0 bytes"),
        (base64.b64encode(bytes.fromhex(GOLDEN_PUBKEY_HEX)[:32]).decode(), "got 32 bytes"),
        (
            base64.b64encode(coincurve.PrivateKey(b"\x01" * 32).public_key.format(compressed=False)).decode(),
            "got 65 bytes",
        ),
        (base64.b64encode(b"\x05" + bytes.fromhex(GOLDEN_PUBKEY_HEX)[1:]).decode(), "expected 02 or 03"),
        (base64.b64encode(OFF_CURVE_PUBKEY).decode(), "not a point on the secp256k1 curve"),
    ],
)
def test_public_key_from_base64_rejects_bad_keys(b64: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        public_key_from_base64(b64)
    with pytest.raises(ValueError, match=problem):
        address_from_base64_public_key(b64)


def test_off_curve_constant_really_is_off_curve() -> None:
    p = 2**256 - 2**32 - 977
    rhs = (5**3 + 7) % p
    assert pow(rhs, (p - 1) // 2, p) == p - 1  # Euler's criterion: rhs is a non-residue


@pytest.mark.parametrize(
    ("hex_str", "problem"),
    [
        ("zz" + GOLDEN_PUBKEY_HEX[2:], "not valid hex"),
        (GOLDEN_PUBKEY_HEX[:-1], "not valid hex"),
        (GOLDEN_PUBKEY_HEX[:-2], "got 32 bytes"),
        (OFF_CURVE_PUBKEY.hex(), "not a point on the secp256k1 curve"),
    ],
)
def test_public_key_from_hex_rejects_bad_keys(hex_str: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        public_key_from_hex(hex_str)


def test_address_from_public_key_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="33 bytes"):
        address_from_public_key(bytes.fromhex(GOLDEN_PUBKEY_HEX)[:20])
