"""Governance model registry and hardware diffs (plan 1.x, 2.1, 2.3; DESIGN.md §6)."""

from __future__ import annotations

import dataclasses

import pytest

from dapi.devnet.schedule.models import GENESIS_MODELS, InvalidModelError, ModelRegistry, apply_hardware_diff
from dapi.devnet.schedule.records import (
    Decimal,
    Hardware,
    HardwareNode,
    HardwareNodes,
    HardwareNodeStatus,
    Model,
)

QWQ = "Qwen/QwQ-32B"
Q7 = "Qwen/Qwen2.5-7B-Instruct"
REGISTRY = ModelRegistry.of([Model(id="model3"), Model(id="model1"), Model(id="model2")])


def test_model_mirrors_every_protobuf_field() -> None:
    # chain-io.md §5.1: Model fields 1..13, by name.
    assert [f.name for f in dataclasses.fields(Model)] == [
        "id",
        "proposed_by",
        "units_of_compute_per_token",
        "context_window",
        "quantization",
        "coins_per_input_token",
        "coins_per_output_token",
        "hf_repo",
        "hf_commit",
        "model_args",
        "v_ram",
        "throughput_per_nonce",
        "validation_threshold",
    ]
    assert Decimal(98, -2).as_float() == pytest.approx(0.98)


def test_genesis_models_are_the_two_of_the_reference() -> None:
    # chain-logic.md §14 "Genesis model definitions" (mainnet genesis: validation_threshold 0.98).
    qwq, q7 = GENESIS_MODELS
    assert (
        qwq.id,
        qwq.units_of_compute_per_token,
        qwq.hf_repo,
        qwq.hf_commit,
        qwq.model_args,
        qwq.v_ram,
        qwq.throughput_per_nonce,
        qwq.validation_threshold,
    ) == (
        "Qwen/QwQ-32B",
        1000,
        "Qwen/QwQ-32B",
        "976055f8c83f394f35dbd3ab09a285a984907bd0",
        ("--quantization", "fp8", "--kv-cache-dtype", "fp8"),
        80,
        1000,
        Decimal(98, -2),
    )
    assert (
        q7.id,
        q7.units_of_compute_per_token,
        q7.hf_repo,
        q7.hf_commit,
        q7.model_args,
        q7.v_ram,
        q7.throughput_per_nonce,
        q7.validation_threshold,
    ) == (
        "Qwen/Qwen2.5-7B-Instruct",
        100,
        "Qwen/Qwen2.5-7B-Instruct",
        "a09a35458c702b33eeacc393d103063234e8bc28",
        ("--quantization", "fp8"),
        24,
        10000,
        Decimal(98, -2),
    )


def test_registry_iterates_in_id_order_like_the_chain_store() -> None:
    registry = ModelRegistry.of([GENESIS_MODELS[1], GENESIS_MODELS[0]])
    # chain-logic.md §6: "Qwen/QwQ-32B" < "Qwen/Qwen2.5-7B-Instruct" ('Q' 0x51 < 'e' 0x65).
    assert registry.ids == (QWQ, Q7)
    assert REGISTRY.ids == ("model1", "model2", "model3")
    # Built directly, too, and with a repeated id the later model wins (as SetModel's upsert).
    direct = ModelRegistry((Model(id="b"), Model(id="a", v_ram=1), Model(id="a", v_ram=2)))
    assert direct.models == (Model(id="a", v_ram=2), Model(id="b"))


def test_is_valid_governance_model() -> None:
    registry = ModelRegistry.of(GENESIS_MODELS)
    assert registry.is_valid_governance_model(QWQ)
    assert registry.is_valid_governance_model(Q7)
    assert not registry.is_valid_governance_model("Qwen/QwQ-32b")  # ids are case sensitive
    assert not registry.is_valid_governance_model("")
    assert registry.get_governance_model(Q7) == GENESIS_MODELS[1]
    assert registry.get_governance_model("unknown") is None


def test_register_model_replaces_the_whole_model_and_leaves_the_old_registry_alone() -> None:
    registry = ModelRegistry.of(GENESIS_MODELS)
    changed = registry.register_model(Model(id=QWQ, v_ram=1000))
    assert changed.get_governance_model(QWQ) == Model(id=QWQ, v_ram=1000)  # no field kept from before
    assert registry.get_governance_model(QWQ) == GENESIS_MODELS[0]
    assert changed.register_model(Model(id="a/new")).ids == ("Qwen/QwQ-32B", "Qwen/Qwen2.5-7B-Instruct", "a/new")
    assert changed.delete_governance_model(QWQ).ids == (Q7,)


def node(local_id: str, *models: str, **kw: object) -> HardwareNode:
    return HardwareNode(local_id=local_id, models=models, **kw)  # type: ignore[arg-type]


def test_hardware_diff_add_modify_remove_like_the_chain_tests() -> None:
    # chain-logic.md §17 msg_server_submit_hardware_diff_test: add node1 [model1, model2] and node2 [model3]
    # → 2 nodes sorted node1, node2; modify node1 (POC status, 3 models, GPU count 4) → replaced;
    # remove node2 → 1 left.
    added = apply_hardware_diff(
        REGISTRY, None, creator="p1", new_or_modified=[node("node2", "model3"), node("node1", "model1", "model2")]
    )
    assert added == HardwareNodes(
        participant="p1", hardware_nodes=(node("node1", "model1", "model2"), node("node2", "model3"))
    )
    node1_v2 = node(
        "node1", "model1", "model2", "model3", status=HardwareNodeStatus.POC, hardware=(Hardware(type="H100", count=4),)
    )
    modified = apply_hardware_diff(REGISTRY, added, creator="p1", new_or_modified=[node1_v2])
    assert modified.hardware_nodes == (node1_v2, node("node2", "model3"))
    removed = apply_hardware_diff(REGISTRY, modified, creator="p1", removed=[node("node2")])
    assert removed.hardware_nodes == (node1_v2,)


def test_hardware_diff_remove_all_still_leaves_a_record() -> None:
    existing = HardwareNodes(participant="p1", hardware_nodes=(node("a", "model1"),))
    assert apply_hardware_diff(REGISTRY, existing, creator="p1", removed=[node("a")]) == HardwareNodes(
        participant="p1", hardware_nodes=()
    )


def test_hardware_nodes_are_kept_sorted_by_local_id() -> None:
    existing = HardwareNodes(participant="p1", hardware_nodes=(node("b"), node("d")))
    result = apply_hardware_diff(
        REGISTRY,
        existing,
        creator="p1",
        new_or_modified=[node("c"), node("a"), node("B"), node("node10"), node("node9")],
    )
    # Byte-wise order: uppercase before lowercase, "node10" before "node9".
    assert [n.local_id for n in result.hardware_nodes] == ["B", "a", "b", "c", "d", "node10", "node9"]


def test_hardware_diff_with_unknown_models_is_rejected_whole_naming_every_id() -> None:
    existing = HardwareNodes(participant="p1", hardware_nodes=(node("keep", "model1"),))
    with pytest.raises(InvalidModelError) as err:
        apply_hardware_diff(
            REGISTRY,
            existing,
            creator="p1",
            new_or_modified=[node("ok", "model1"), node("bad", "model2", "zeta/x", "alpha/y"), node("bad2", "zeta/x")],
            removed=[node("keep")],
        )
    assert err.value.model_ids == ("alpha/y", "zeta/x")
    assert "alpha/y" in str(err.value) and "zeta/x" in str(err.value)
    assert "model2" not in str(err.value)
    assert (err.value.codespace, err.value.code) == ("inference", 1134)
    # Nothing was applied: the caller keeps `existing`, which the failed diff did not touch.
    assert existing.hardware_nodes == (node("keep", "model1"),)


def test_removed_nodes_are_not_validated() -> None:
    # A node listing a model governance has since deleted must still be removable.
    existing = HardwareNodes(participant="p1", hardware_nodes=(node("old", "deleted/model"),))
    assert apply_hardware_diff(REGISTRY, existing, creator="p1", removed=[node("old", "deleted/model")]) == (
        HardwareNodes(participant="p1", hardware_nodes=())
    )
