"""ML node callbacks: the real ML node's payloads accepted verbatim, strict checks, durable queueing.

The body rules are the same on a node's own URL and on the shared routes; the shared ones are turned on
here (``legacy_callbacks``), and tests/test_callback_urls.py covers what each route accepts and from whom.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from outbox_rows import stored

from dapi.chain.keys import address_from_public_key
from dapi.chain.outbox import Outbox
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitPocBatch, MsgSubmitPocValidation
from dapi.metrics import Metrics
from dapi.runtime.serving import start_server
from dapi.server.mlnode.app import create_mlnode_app

ACCOUNT = "gonka1helduaxd0n4q3mp6w8f5vt8x2u6t9whf74jpwe"

# Observed payloads of the real ML node's Sender, from reference/http.md §6.2: verbatim, except that the
# validated batch's prover key, a placeholder ("03cd") in that observation, is a real 33-byte compressed
# key here, as a real ML node reports it (it validates batches the chain stores under the prover's key).
PROVER_KEY = "035b3d1462dc1577673d973161b7168dc17323339909078367c3b6426cceabfeda"
REAL_GENERATED = '{"public_key": "02ab", "block_hash": "H", "block_height": 10, "nonces": [1, 3, 5], "dist": [0.5, 0.7, 0.9], "node_id": 1}'
REAL_VALIDATED = ('{"public_key": "035b3d1462dc1577673d973161b7168dc17323339909078367c3b6426cceabfeda", "block_hash": "H", "block_height": 10, "nonces": [7, 9], "dist": [0.15, 2.0], '
                  '"node_id": 0, "received_dist": [0.1, 0.2], "r_target": 1.4, "fraud_threshold": 1e-07, "n_invalid": 1, '
                  '"probability_honest": 0.00099975, "fraud_detected": false}')
# The testermint mock ML node (reference/http.md §6.3) sends no node_id and an extra received_dist.
MOCK_GENERATED = {"public_key": "02ab", "block_hash": "H", "block_height": 10, "nonces": [1, 2], "dist": [0.1, 0.2],
                  "received_dist": [0.1, 0.2]}
# The observed payloads as the own node1 would post them: the participant's key is the observation's
# placeholder, and the PoC stage its height and hash.
OWN_KEY = "02ab"
NODE1_URL = "/n/secret-of-node1/v1"
ROUTES = ["/v1", NODE1_URL]


class Nodes:
    def node_id_by_secret(self, secret: str) -> str | None:
        return {"secret-of-node1": "node1", "secret-of-node2": "node2"}.get(secret)

    def node_id_by_num(self, node_num: int) -> str | None:
        return {1: "node1", 2: "node2"}.get(node_num)

    def poc_stage_hash(self, height: int) -> str | None:
        return {10: "H"}.get(height)

    def closed_window(self, stage_height: int, *, validation: bool) -> tuple[int, int] | None:
        return None


@pytest.fixture
async def client(outbox: Outbox) -> AsyncIterator[httpx.AsyncClient]:
    app = create_mlnode_app(nodes=Nodes(), outbox=outbox, account_address=ACCOUNT, participant_pubkey_hex=OWN_KEY,
                            legacy_callbacks=True, metrics=Metrics(), body_limit=4096)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ml") as c:
        yield c


@pytest.mark.parametrize("route", ROUTES)
async def test_real_ml_node_payloads_are_accepted_verbatim(client: httpx.AsyncClient, outbox: Outbox,
                                                           route: str) -> None:
    headers = {"content-type": "application/json"}
    r1 = await client.post(f"{route}/poc-batches/generated", content=REAL_GENERATED, headers=headers)
    r2 = await client.post(f"{route}/poc-batches/validated", content=REAL_VALIDATED, headers=headers)
    assert (r1.status_code, r1.content, r2.status_code, r2.content) == (200, b"", 200, b"")
    batch, validation = stored(outbox.path)
    assert isinstance(batch, MsgSubmitPocBatch)
    assert (batch.creator, batch.poc_stage_start_block_height, list(batch.nonces), list(batch.dist), batch.node_id) == (
        ACCOUNT, 10, [1, 3, 5], [0.5, 0.7, 0.9], "node1")
    assert len(batch.batch_id) == 36  # a random UUID
    assert isinstance(validation, MsgSubmitPocValidation)
    assert validation.participant_address == address_from_public_key(bytes.fromhex(PROVER_KEY))
    assert (validation.creator, validation.poc_stage_start_block_height) == (ACCOUNT, 10)
    assert (validation.r_target, validation.fraud_threshold, validation.n_invalid) == (1.4, 1e-07, 1)
    assert (validation.probability_honest, validation.fraud_detected) == (0.00099975, False)
    # Emptied on purpose (the chain reads only the verdict), as the reference does.
    assert list(validation.nonces) == list(validation.dist) == list(validation.received_dist) == []


@pytest.mark.parametrize(("node_num", "expected"), [(2, "node2"), (None, ""), (0, ""), (99, "")])
async def test_node_id_present_absent_and_unknown(client: httpx.AsyncClient, outbox: Outbox, node_num: int | None,
                                                  expected: str) -> None:
    body = dict(MOCK_GENERATED)
    if node_num is not None:
        body["node_id"] = node_num
    response = await client.post("/mlnode/v1/poc-batches/generated", json=body)
    assert response.status_code == 200
    [batch] = stored(outbox.path)
    assert batch.node_id == expected and list(batch.nonces) == [1, 2]


async def test_every_batch_gets_its_own_batch_id(client: httpx.AsyncClient, outbox: Outbox) -> None:
    for _ in range(3):
        assert (await client.post("/v1/poc-batches/generated", content=REAL_GENERATED)).status_code == 200
    assert len({b.batch_id for b in stored(outbox.path)}) == 3


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"nonces": [1, -3, 5]}, "nonces[1]"),
        ({"nonces": [1, 3.0, 5]}, "nonces[1]"),
        ({"nonces": [1, "3", 5]}, "nonces[1]"),
        ({"nonces": []}, "nonces"),
        ({"dist": [0.5, -0.1, 0.9]}, "dist[1]"),
        ({"dist": [0.5, 0.7]}, "dist"),
        ({"block_height": 0}, "block_height"),
        ({"block_height": "10"}, "block_height"),
        ({"public_key": "xyz"}, "public_key"),
        ({"node_id": -1}, "node_id"),
        ({"node_id": 1.5}, "node_id"),
    ],
)
async def test_bad_batches_get_400_naming_the_field(client: httpx.AsyncClient, outbox: Outbox,
                                                    change: dict[str, Any], field: str, route: str) -> None:
    body = {**json.loads(REAL_GENERATED), **change}
    response = await client.post(f"{route}/poc-batches/generated", json=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith(field)
    assert stored(outbox.path) == []


async def test_non_finite_distance_is_rejected(client: httpx.AsyncClient) -> None:
    body = REAL_GENERATED.replace("[0.5, 0.7, 0.9]", "[0.5, NaN, 0.9]")
    response = await client.post("/v1/poc-batches/generated", content=body)
    assert response.status_code == 400 and response.json()["error"].startswith("dist[1]")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("change", "field"),
    [({"received_dist": [0.1]}, "received_dist"), ({"fraud_detected": "no"}, "fraud_detected"),
     ({"n_invalid": -1}, "n_invalid"), ({"r_target": None}, "r_target")],
)
async def test_bad_validated_batches_get_400(client: httpx.AsyncClient, change: dict[str, Any], field: str,
                                            route: str) -> None:
    body = {**json.loads(REAL_VALIDATED), **change}
    response = await client.post(f"{route}/poc-batches/validated", json=body)
    assert response.status_code == 400 and response.json()["error"].startswith(field)


async def test_malformed_and_oversized_bodies(client: httpx.AsyncClient) -> None:
    not_json = await client.post("/v1/poc-batches/generated", content=b"{nope")
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    array = await client.post("/v1/poc-batches/generated", json=[1, 2])
    assert array.status_code == 400 and array.json()["error"].startswith("body")
    big = {**json.loads(REAL_GENERATED), "nonces": list(range(2000)), "dist": [0.1] * 2000}
    too_large = await client.post("/v1/poc-batches/generated", json=big)
    assert too_large.status_code == 413 and "larger than 4096" in too_large.json()["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: the limit still holds
        for _ in range(10):
            yield b" " * 1000

    streamed = await client.post("/v1/poc-batches/generated", content=chunks())
    assert streamed.status_code == 413
    missing = await client.get("/v1/poc-batches/nothing")
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}


async def test_without_a_signer_batches_are_refused_not_swallowed(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", broadcaster=None, signer_factory=None)
    await box.open()
    app = create_mlnode_app(nodes=Nodes(), outbox=box, account_address=ACCOUNT, participant_pubkey_hex=OWN_KEY,
                            legacy_callbacks=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ml") as c:
        responses = [await c.post(f"{route}/poc-batches/generated", content=REAL_GENERATED) for route in ROUTES]
    await box.stop()
    assert all(r.status_code == 503 and "signer" in r.json()["error"] for r in responses)


@pytest.fixture
async def served(outbox: Outbox) -> AsyncIterator[httpx.AsyncClient]:
    """The callback app behind a real server on loopback, with the daemon's default body limit."""
    server = await start_server(create_mlnode_app(nodes=Nodes(), outbox=outbox, account_address=ACCOUNT,
                                                  participant_pubkey_hex=OWN_KEY, legacy_callbacks=True))
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            yield c
    finally:
        await server.stop()


def with_raw(body: str, key: str, literal: str) -> str:
    """``body`` (JSON text) with the value of ``key`` replaced by a literal no JSON encoder would write."""
    doc = json.loads(body)
    doc[key] = "@@"
    return json.dumps(doc).replace('"@@"', literal)


HUGE_INT = "1" + "0" * 400  # a valid JSON number beyond the float range
DEEP = 100_000


@pytest.mark.parametrize("prefix", ROUTES)
@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("generated", "[" * DEEP + "]" * DEEP, "request body"),
        ("validated", '{"dist": ' + "[" * DEEP + "]" * DEEP + "}", "request body"),
        ("generated", with_raw(REAL_GENERATED, "dist", f"[0.5, {HUGE_INT}, 0.9]"), "dist[1]"),
        ("validated", with_raw(REAL_VALIDATED, "dist", f"[{HUGE_INT}, 0.1]"), "dist[0]"),
        ("validated", with_raw(REAL_VALIDATED, "received_dist", f"[0.1, {HUGE_INT}]"), "received_dist[1]"),
        ("validated", with_raw(REAL_VALIDATED, "r_target", HUGE_INT), "r_target"),
        ("validated", with_raw(REAL_VALIDATED, "r_target", "-" + HUGE_INT), "r_target"),
        ("validated", with_raw(REAL_VALIDATED, "probability_honest", HUGE_INT), "probability_honest"),
        ("validated", with_raw(REAL_VALIDATED, "fraud_threshold", HUGE_INT), "fraud_threshold"),
        ("validated", with_raw(REAL_VALIDATED, "n_invalid", str(2**63)), "n_invalid"),
        ("validated", with_raw(REAL_VALIDATED, "n_invalid", HUGE_INT), "n_invalid"),
        ("generated", with_raw(REAL_GENERATED, "node_id", str(2**63)), "node_id"),
        ("generated", with_raw(REAL_GENERATED, "node_id", HUGE_INT), "node_id"),
        ("validated", with_raw(REAL_VALIDATED, "node_id", str(2**64)), "node_id"),
        ("generated", with_raw(REAL_GENERATED, "block_height", HUGE_INT), "block_height"),
        ("generated", with_raw(REAL_GENERATED, "nonces", f"[{HUGE_INT}]"), "nonces[0]"),
    ],
)
async def test_hostile_numbers_and_nesting_are_400_not_500(served: httpx.AsyncClient, outbox: Outbox, route: str,
                                                           body: str, field: str, prefix: str) -> None:
    response = await served.post(f"{prefix}/poc-batches/{route}", content=body)
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"].startswith(field)
    assert len(response.json()["error"]) < 300
    assert stored(outbox.path) == []


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("03cd", "got 2 bytes"),
        ("04" + "11" * 64, "got 65 bytes"),
        ("05" + PROVER_KEY[2:], "got 33 bytes"),
        ("02" + "ff" * 32, "not a point on the curve"),
        ("0x" + PROVER_KEY, "hex"),
    ],
)
async def test_validated_batch_names_its_prover_by_a_compressed_key(served: httpx.AsyncClient, outbox: Outbox,
                                                                     key: str, problem: str, route: str) -> None:
    response = await served.post(f"{route}/poc-batches/validated",
                                 json={**json.loads(REAL_VALIDATED), "public_key": key})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("public_key: ") and problem in error
    assert stored(outbox.path) == []
    upper = await served.post(f"{route}/poc-batches/validated",
                              json={**json.loads(REAL_VALIDATED), "public_key": PROVER_KEY.upper()})
    assert upper.status_code == 200


async def test_node_number_at_the_int64_limit_is_still_a_number(served: httpx.AsyncClient, outbox: Outbox) -> None:
    response = await served.post("/v1/poc-batches/generated", content=with_raw(REAL_GENERATED, "node_id", str(2**63 - 1)))
    assert response.status_code == 200
    [batch] = stored(outbox.path)
    assert batch.node_id == ""  # no node has that number


# --- batches too big for one transaction (CometBFT max_tx_bytes) -----------------------------------------


async def test_a_batch_too_big_for_one_transaction_is_split_before_it_is_accepted(outbox: Outbox) -> None:
    # 100,000 nonces make a ~1.3 MB MsgSubmitPocBatch, over the chain's 1 MiB: answered 200 only as
    # messages that fit, in order, each its own batch id.
    app = create_mlnode_app(nodes=Nodes(), outbox=outbox, account_address=ACCOUNT, participant_pubkey_hex=OWN_KEY,
                            metrics=Metrics())
    nonces = [1 + 7 * k for k in range(100_000)]
    body = {"public_key": OWN_KEY, "block_hash": "H", "block_height": 10, "nonces": nonces,
            "dist": [0.25 + (k % 100) / 100 for k in range(100_000)], "node_id": 1}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ml") as client:
        response = await client.post(f"{NODE1_URL}/poc-batches/generated", json=body)
    assert response.status_code == 200
    parts = stored(outbox.path)
    assert len(parts) == 2
    assert all(isinstance(p, MsgSubmitPocBatch) and p.ByteSize() < 1_048_576 - 2048 for p in parts)
    assert [n for p in parts for n in p.nonces] == nonces  # type: ignore[attr-defined]
    assert len({p.batch_id for p in parts}) == 2  # type: ignore[attr-defined]
    assert {p.node_id for p in parts} == {"node1"}  # type: ignore[attr-defined]


async def test_a_batch_no_split_can_fit_is_413(outbox: Outbox) -> None:
    app = create_mlnode_app(nodes=Nodes(), outbox=outbox, account_address=ACCOUNT, participant_pubkey_hex=OWN_KEY,
                            max_tx_bytes=1024)
    body = {"public_key": OWN_KEY, "block_hash": "H", "block_height": 10, "nonces": [1, 2], "dist": [0.1, 0.2]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ml") as client:
        response = await client.post(f"{NODE1_URL}/poc-batches/generated", json=body)
    assert response.status_code == 413 and "1024 bytes" in response.json()["error"]
    assert stored(outbox.path) == []
