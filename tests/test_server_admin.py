"""Admin API: node management against the real broker, with the reference's JSON and our fixed statuses."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from broker_fakes import MODEL_A, MODEL_B, FakeChain, gov_model, make_broker

from dapi.broker import Broker
from dapi.chain.errors import ChainUnavailable
from dapi.node_store import NodeStore
from dapi.runtime.serving import start_server
from dapi.server.admin.app import create_admin_app

NODE: dict[str, Any] = {"id": "node1", "host": "10.0.0.5", "inference_port": 5000, "poc_port": 8080,
                        "max_concurrent": 500, "models": {MODEL_A: {"args": ["--quantization", "fp8"]}},
                        "hardware": [{"type": "H100", "count": 8}]}


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[FakeChain, Broker, NodeStore, httpx.AsyncClient]]:
    chain = FakeChain([gov_model(MODEL_A), gov_model(MODEL_B)])
    broker = make_broker(chain, tmp_path)
    store = NodeStore(tmp_path / "nodes.json")
    await broker.start()
    app = create_admin_app(broker=broker, store=store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as client:
        yield chain, broker, store, client
    await broker.stop()


async def test_add_list_and_delete_a_node(setup: Any, tmp_path: Path) -> None:
    *_, client = setup
    added = await client.post("/admin/v1/nodes", json=NODE)
    assert added.status_code == 200
    assert added.json() == {"host": "10.0.0.5", "inference_segment": "", "inference_port": 5000, "poc_segment": "",
                            "poc_port": 8080, "models": {MODEL_A: {"args": ["--quantization", "fp8"]}},
                            "id": "node1", "max_concurrent": 500, "node_num": 1,
                            "hardware": [{"type": "H100", "count": 8}], "version": ""}
    [item] = (await client.get("/admin/v1/nodes")).json()
    assert item["node"]["node_num"] == 1
    assert set(item["state"]) >= {"intended_status", "current_status", "poc_intended_status", "poc_current_status",
                                  "lock_count", "failure_reason", "status_timestamp", "admin_state", "epoch_models",
                                  "epoch_ml_nodes"}
    assert item["state"]["admin_state"] == {"enabled": True, "epoch": 0}
    assert (await client.delete("/admin/v1/nodes/node1")).json() is True
    assert (await client.delete("/admin/v1/nodes/node1")).json() is False
    assert (await client.get("/admin/v1/nodes")).json() == []
    # Persisted: a restart registers the added-then-removed node no more.
    store = NodeStore(tmp_path / "nodes.json")
    await store.load()
    assert store.effective([]) == [] and store.removed == {"node1"}


async def test_duplicate_id_is_409_and_leaves_the_node_alone(setup: Any) -> None:
    *_, client = setup
    assert (await client.post("/admin/v1/nodes", json=NODE)).status_code == 200
    other = {**NODE, "host": "10.9.9.9"}
    again = await client.post("/admin/v1/nodes", json=other)
    assert again.status_code == 409 and "node1" in again.json()["error"]
    [item] = (await client.get("/admin/v1/nodes")).json()
    assert item["node"]["host"] == "10.0.0.5"


async def test_non_governance_models_are_400_naming_them(setup: Any) -> None:
    _, _, _, client = setup
    body = {**NODE, "models": {MODEL_A: {"args": []}, "org/unknown": {"args": []}, "org/other": {"args": []}}}
    response = await client.post("/admin/v1/nodes", json=body)
    assert response.status_code == 400
    assert "org/other" in response.json()["error"] and "org/unknown" in response.json()["error"]
    assert (await client.get("/admin/v1/nodes")).json() == []
    # A rejected registration consumes no node number.
    assert (await client.post("/admin/v1/nodes", json=NODE)).json()["node_num"] == 1


async def test_malformed_bodies_are_400_naming_the_field(setup: Any) -> None:
    _, _, _, client = setup
    bad_port = await client.post("/admin/v1/nodes", json={**NODE, "poc_port": "eighty"})
    assert bad_port.status_code == 400 and "poc_port" in bad_port.json()["error"]
    missing = await client.post("/admin/v1/nodes", json={"host": "h"})
    assert missing.status_code == 400 and "id" in missing.json()["error"]
    not_json = await client.post("/admin/v1/nodes", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400


async def test_governance_unreachable_is_503(setup: Any) -> None:
    chain, _, _, client = setup
    chain.fail_next("models_all", ChainUnavailable("connection refused"))
    response = await client.post("/admin/v1/nodes", json=NODE)
    assert response.status_code == 503 and "governance" in response.json()["error"]


async def test_batch_add_answers_201_with_the_accepted_nodes(setup: Any, tmp_path: Path) -> None:
    _, _, _, client = setup
    batch = [NODE, {**NODE, "id": "node2", "models": {"org/unknown": {"args": []}}}, {**NODE, "id": "node3"}]
    response = await client.post("/admin/v1/nodes/batch", json=batch)
    assert response.status_code == 201
    assert [(n["id"], n["node_num"]) for n in response.json()] == [("node1", 1), ("node3", 2)]
    store = NodeStore(tmp_path / "nodes.json")
    await store.load()
    assert [n.id for n in store.effective([])] == ["node1", "node3"]


async def test_enable_and_disable(setup: Any) -> None:
    _, broker, _, client = setup
    await client.post("/admin/v1/nodes", json=NODE)
    off = await client.post("/admin/v1/nodes/node1/disable")
    assert off.json() == {"message": "node disabled successfully", "node_id": "node1"}
    assert broker.node("node1").state.admin_state.enabled is False
    on = await client.post("/admin/v1/nodes/node1/enable")
    assert on.json() == {"message": "node enabled successfully", "node_id": "node1"}
    unknown = await client.post("/admin/v1/nodes/ghost/enable")
    assert unknown.status_code == 404 and unknown.json() == {"error": "node not found: ghost"}


async def test_bearer_token_when_configured(tmp_path: Path) -> None:
    chain = FakeChain([gov_model(MODEL_A)])
    broker = make_broker(chain, tmp_path)
    app = create_admin_app(broker=broker, store=NodeStore(tmp_path / "nodes.json"), token="s3cret")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as client:
        assert (await client.get("/admin/v1/nodes")).status_code == 401
        wrong = await client.get("/admin/v1/nodes", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json() == {"error": "Authorization is required"}
        right = await client.get("/admin/v1/nodes", headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200


async def test_bearer_scheme_is_case_insensitive_and_the_token_compared_in_constant_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    broker = make_broker(FakeChain([gov_model(MODEL_A)]), tmp_path)
    app = create_admin_app(broker=broker, store=NodeStore(tmp_path / "nodes.json"), token="s3cret")
    server = await start_server(app)
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            for header in ("Bearer s3cret", "bearer s3cret", "BEARER s3cret", "bEaReR  s3cret"):
                response = await client.get("/admin/v1/nodes", headers={"Authorization": header})
                assert response.status_code == 200, header
            for header in ("Basic s3cret", "Bearer s3cre", "Bearer s3cret2", "Bearers3cret", "s3cret", "Bearer"):
                response = await client.get("/admin/v1/nodes", headers={"Authorization": header})
                assert response.status_code == 401, header
    finally:
        await server.stop()
    # Every check went through the constant-time comparison, with the configured token.
    assert len(compared) == 10 and all(b == b"s3cret" for _, b in compared)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Broker, httpx.AsyncClient]]:
    """The admin app behind a real server on loopback."""
    broker = make_broker(FakeChain([gov_model(MODEL_A), gov_model(MODEL_B)]), tmp_path)
    await broker.start()
    server = await start_server(create_admin_app(broker=broker, store=NodeStore(tmp_path / "nodes.json")))
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            yield broker, client
    finally:
        await server.stop()
        await broker.stop()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": "../../etc/passwd"}, "id"),
        ({"id": "n" * 100_000}, "id"),
        ({"id": "node\u202e1"}, "id"),
        ({"id": "node\x001"}, "id"),
        ({"id": "node 1"}, "id"),
        ({"id": "-node1"}, "id"),
        ({"id": "n" * 129}, "id"),
        ({"host": "http://10.0.0.5"}, "host"),
        ({"host": "10.0.0.5/v1"}, "host"),
        ({"host": "bad host"}, "host"),
        ({"host": "10.0.0.300"}, "host"),
        ({"host": ""}, "host"),
        ({"inference_port": "5000"}, "inference_port"),
        ({"inference_port": True}, "inference_port"),
        ({"inference_port": 5000.0}, "inference_port"),
        ({"poc_port": 0}, "poc_port"),
        ({"poc_port": 65536}, "poc_port"),
        ({"poc_port": "1"}, "poc_port"),
        ({"max_concurrent": "500"}, "max_concurrent"),
        ({"hardware": [{"type": "H100", "count": "8"}]}, "hardware"),
        ({"hardware": [{"type": "H100", "count": True}]}, "hardware"),
    ],
)
async def test_bad_node_fields_are_400_naming_the_field(served: tuple[Broker, httpx.AsyncClient],
                                                        change: dict[str, Any], field: str) -> None:
    broker, client = served
    for path, body in (("/admin/v1/nodes", {**NODE, **change}), ("/admin/v1/nodes/batch", [{**NODE, **change}])):
        response = await client.post(path, json=body)
        assert response.status_code == 400, (path, response.text[:200])
        assert field in response.json()["error"]
    assert broker.nodes() == []


@pytest.mark.parametrize(("node_id", "host"), [("node-1.gpu_a", "10.0.0.5"), ("N1", "gpu-01.example.com"),
                                               ("n" * 128, "::1"), ("7", "[fd00::5]"), ("a.b", "ml_node_1")])
async def test_reasonable_ids_and_hosts_are_accepted(served: tuple[Broker, httpx.AsyncClient],
                                                      node_id: str, host: str) -> None:
    _, client = served
    response = await client.post("/admin/v1/nodes", json={**NODE, "id": node_id, "host": host})
    assert response.status_code == 200, response.text
    assert (await client.post(f"/admin/v1/nodes/{node_id}/disable")).status_code == 200
    assert (await client.delete(f"/admin/v1/nodes/{node_id}")).json() is True


@pytest.mark.parametrize("node_id", ["%E2%80%AE", "a%00b", "n" * 129, "a%20b", "%2E%2E", ".hidden", "-x"])
async def test_bad_node_ids_in_paths_are_400(served: tuple[Broker, httpx.AsyncClient], node_id: str) -> None:
    _, client = served
    for method, path in (("DELETE", f"/admin/v1/nodes/{node_id}"), ("POST", f"/admin/v1/nodes/{node_id}/enable"),
                         ("POST", f"/admin/v1/nodes/{node_id}/disable")):
        response = await client.request(method, path)
        assert response.status_code == 400, (method, path)
        assert "node_id" in response.json()["error"]
