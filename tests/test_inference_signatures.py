"""The signed bytes of an inference request and both client schemes, against the worked example of
reference/inference.md §6.1 (byte for byte), plus the validation sampling of §4.1 with its golden values."""

from __future__ import annotations

import base64
import hashlib
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dapi.chain.keys import SigningKey
from dapi.inference import sampling
from dapi.inference.signatures import (
    ClientScheme,
    decode_signature,
    dev_signed_bytes,
    executor_signed_bytes,
    sign,
    ta_signed_bytes,
    verify,
    verify_dev_signature,
    verify_ta_signature,
)

# reference/inference.md §6.1: keys 0x01x32 (requester), 0x02x32 (transfer agent), 0x03x32 (executor).
DEV = SigningKey(b"\x01" * 32)
TA = SigningKey(b"\x02" * 32)
EXECUTOR = SigningKey(b"\x03" * 32)
BODY = b'{"model":"m","messages":[]}'
TS = 1700000000000000000

RAW_SIGNED = (b'{"model":"m","messages":[]}1700000000000000000'
              b"gonka1a0qwuze2h85zw7nqpsj3ga0z9geyrgwp82qvav")
RAW_DIGEST = "9df6e501e36e37443bccf04ef8ac077c4d12769db561e6886e0c4e2bcd4c6fb2"
RAW_AUTHORIZATION = "ZfsG6QZN2c4D0RfKZrqtD/IqTABMbtlGY2Ke+f8spgt6h4ygAfANCfLjpfuAbf9PRF+5BcTWJQjB4XvNLVpXYw=="
HEX_SIGNED = (b"0bfcf1c873fe23e87366969117efdc24b95f341eb2f4abe10ae01e7a1f4994c61700000000000000000"
              b"gonka1a0qwuze2h85zw7nqpsj3ga0z9geyrgwp82qvav")
HEX_DIGEST = "1809d81a676255562762eb3d656e0f8cddbfad084389c6e6f1daf6dd6cf851ac"
HEX_AUTHORIZATION = "IuEYdqlK3k92IKspnfQ5dlfTEHTXcdMC18QZFC094L8KCWkNcf1iPRjfUAVd1bRzxPhlAnpwLfHtokNZ5tF+hw=="
TA_SIGNATURE = "WX1/16jyn2VneRCTd3tZYfw+nPZENheoJqOf/mbBccpm1RH26XniKUGNJDsEsXDQk5ercnQ67hGcl1xR21PV2Q=="
EXECUTOR_SIGNATURE = "nW2Qinv7NfKcIiZjsXx8HA6q5WOM9C7wEIehmJQzwOEB/5js3w63wvK/rJEprHI95F/FlemYz8z7BX0qgEX8bA=="


def test_the_worked_example_keys_and_addresses() -> None:
    assert base64.b64encode(DEV.public_key).decode() == "AxuExVZ7EmRAmV0+1aq6BWXXHhg0YEgZ/5wX9enV3QeP"
    assert DEV.address == "gonka10xcqpzrky6eff2g52qdye53xkk9jxkvr34az8p"
    assert TA.address == "gonka1a0qwuze2h85zw7nqpsj3ga0z9geyrgwp82qvav"
    assert EXECUTOR.address == "gonka1g975h6gdx5mryeac72h6lj2nzygugxhy6n040l"


def test_raw_scheme_signed_bytes_and_signature_are_the_golden_ones() -> None:
    signed = dev_signed_bytes(BODY, TS, TA.address)
    assert signed == RAW_SIGNED
    assert hashlib.sha256(signed).hexdigest() == RAW_DIGEST
    assert sign(DEV, signed) == RAW_AUTHORIZATION


def test_sha256_hex_scheme_signed_bytes_and_signature_are_the_golden_ones() -> None:
    signed = dev_signed_bytes(BODY, TS, TA.address, ClientScheme.SHA256_HEX)
    assert signed == HEX_SIGNED
    assert hashlib.sha256(signed).hexdigest() == HEX_DIGEST
    assert sign(DEV, signed) == HEX_AUTHORIZATION


def test_transfer_agent_and_executor_sign_the_same_golden_bytes() -> None:
    signed = ta_signed_bytes(BODY, TS, TA.address, EXECUTOR.address)
    assert signed == RAW_SIGNED + b"gonka1g975h6gdx5mryeac72h6lj2nzygugxhy6n040l"
    assert executor_signed_bytes(BODY, TS, TA.address, EXECUTOR.address) == signed
    assert sign(TA, signed) == TA_SIGNATURE
    assert sign(EXECUTOR, signed) == EXECUTOR_SIGNATURE


def test_verification_accepts_both_client_schemes_and_says_which() -> None:
    assert verify_dev_signature(DEV.public_key, BODY, TS, TA.address, RAW_AUTHORIZATION) is ClientScheme.RAW
    assert verify_dev_signature(DEV.public_key, BODY, TS, TA.address, HEX_AUTHORIZATION) is ClientScheme.SHA256_HEX


@pytest.mark.parametrize("change", ["body", "timestamp", "transfer", "key"])
def test_any_change_breaks_the_developer_signature(change: str) -> None:
    body = BODY + b" " if change == "body" else BODY
    ts = TS + 1 if change == "timestamp" else TS
    transfer = EXECUTOR.address if change == "transfer" else TA.address
    key = TA.public_key if change == "key" else DEV.public_key
    assert verify_dev_signature(key, body, ts, transfer, RAW_AUTHORIZATION) is None
    assert verify_dev_signature(key, body, ts, transfer, HEX_AUTHORIZATION) is None


def test_ta_signature_is_checked_against_any_of_several_keys() -> None:
    keys = (DEV.public_key, TA.public_key)
    assert verify_ta_signature(keys, BODY, TS, TA.address, EXECUTOR.address, TA_SIGNATURE) is ClientScheme.RAW
    assert verify_ta_signature((DEV.public_key,), BODY, TS, TA.address, EXECUTOR.address, TA_SIGNATURE) is None
    # Signed for another executor: not valid for this one.
    assert verify_ta_signature(keys, BODY, TS, TA.address, DEV.address, TA_SIGNATURE) is None
    hex_signed = ta_signed_bytes(BODY, TS, TA.address, EXECUTOR.address, ClientScheme.SHA256_HEX)
    hex_signature = sign(EXECUTOR, hex_signed)
    assert verify_ta_signature([EXECUTOR.public_key], BODY, TS, TA.address, EXECUTOR.address,
                               hex_signature) is ClientScheme.SHA256_HEX


@pytest.mark.parametrize("signature", [
    "", "not base64!", RAW_AUTHORIZATION[:-4], base64.b64encode(b"\x00" * 63).decode(),
    base64.b64encode(b"\x00" * 65).decode(), RAW_AUTHORIZATION + "\n", "é" * 88,
])
def test_malformed_signatures_are_invalid_not_errors(signature: str) -> None:
    assert decode_signature(signature) is None
    assert not verify([DEV.public_key], RAW_SIGNED, signature)
    assert verify_dev_signature(DEV.public_key, BODY, TS, TA.address, signature) is None


@given(body=st.binary(max_size=200), ts=st.integers(min_value=0, max_value=2**63 - 1))
def test_what_one_signs_the_other_verifies(body: bytes, ts: int) -> None:
    for scheme in ClientScheme:
        signature = sign(DEV, dev_signed_bytes(body, ts, TA.address, scheme))
        assert verify_dev_signature(DEV.public_key, body, ts, TA.address, signature) is scheme


# --- sampling (reference/inference.md §4.1 golden values) ------------------------------------------


@pytest.mark.parametrize(("traffic", "expected"), [
    (0, "1.0"), (100, "1.0"), (2550, "0.525"), (5000, "0.05"), (10000, "0.01"), (20000, "0.01"),
])
def test_minimum_validation_average_golden_values(traffic: int, expected: str) -> None:
    assert sampling.minimum_validation_average(traffic) == Decimal(expected)


def test_random_fraction_golden_value() -> None:
    assert hashlib.sha256(b"42:abc").digest()[:8].hex() == "4c611c47136d0d52"
    r = sampling.random_fraction(42, "abc")
    # 0.29835678801775974…, which the spec prints rounded to 14 places.
    assert round(r, 14) == Decimal("0.29835678801776")
    assert r == Decimal("0.2983567880177597")  # the chain's 16-place quotient


def test_at_low_traffic_each_validator_validates_its_share_of_the_other_weight() -> None:
    # reputation 0 and no traffic: target 1.0, so p = validator / (total - executor).
    p = sampling.validation_probability(traffic_basis=0, executor_reputation=0, total_power=300, validator_power=100,
                                        executor_power=100)
    assert p == Decimal("0.5")
    # Full reputation and full traffic: p = min_validation_average * share.
    p = sampling.validation_probability(traffic_basis=10000, executor_reputation=100, total_power=300,
                                        validator_power=200, executor_power=100)
    assert p == Decimal("0.01")
    # Only the executor has power: nobody has to validate.
    assert sampling.validation_probability(traffic_basis=0, executor_reputation=0, total_power=100,
                                           validator_power=0, executor_power=100) == 0


def test_should_validate_is_the_draw_below_the_probability() -> None:
    kwargs = {"traffic_basis": 0, "executor_reputation": 0, "total_power": 300, "executor_power": 100}
    # r(42, "abc") ≈ 0.298: validated with p = 0.5, not with p = 0.25.
    assert sampling.should_validate(seed=42, inference_id="abc", validator_power=100, **kwargs)
    assert not sampling.should_validate(seed=42, inference_id="abc", validator_power=50, **kwargs)
    # The share over many ids follows p.
    hits = sum(sampling.should_validate(seed=7, inference_id=f"id-{i}", validator_power=50, **kwargs)
               for i in range(4000))
    assert 0.22 < hits / 4000 < 0.28
