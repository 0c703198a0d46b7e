"""The governance model registry and hardware diffs validated against it (plan 1.x, 2.1, 2.3).

Ids sort as Python strings, which for UTF-8 text is the same order as the chain's byte-wise compare,
so "sorted by id" means the same thing on both sides.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dapi.devnet.schedule.records import Decimal, HardwareNode, HardwareNodes, Model

__all__ = [
    "GENESIS_MODELS",
    "InvalidModelError",
    "ModelRegistry",
    "apply_hardware_diff",
]


class InvalidModelError(ValueError):
    """A hardware diff names models that are not governance models; the whole diff is rejected.

    `code`/`codespace` are the chain's ErrInvalidModel, so the devnet can show it as the tx result code.
    """

    codespace = "inference"
    code = 1134

    def __init__(self, model_ids: Iterable[str]) -> None:
        self.model_ids: tuple[str, ...] = tuple(sorted(set(model_ids)))
        super().__init__("invalid model: not a governance model: " + ", ".join(repr(m) for m in self.model_ids))


@dataclass(frozen=True, slots=True)
class ModelRegistry:
    """The governance models, kept sorted by id (the chain store's iteration order).

    Immutable: a governance change yields a new registry, so anything formed from an older one
    (epoch model snapshots) cannot be touched by it.
    """

    models: tuple[Model, ...] = ()

    def __post_init__(self) -> None:
        # Normalise however it was built: one model per id (a later entry replaces an earlier one, as
        # SetModel), in id order, so lookups and iteration never depend on the caller's order.
        by_id = {model.id: model for model in self.models}
        object.__setattr__(self, "models", tuple(by_id[mid] for mid in sorted(by_id)))

    @classmethod
    def of(cls, models: Iterable[Model]) -> ModelRegistry:
        return cls(tuple(models))

    def get_governance_model(self, model_id: str) -> Model | None:
        for model in self.models:
            if model.id == model_id:
                return model
        return None

    def get_governance_models(self) -> tuple[Model, ...]:
        return self.models

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models)

    def is_valid_governance_model(self, model_id: str) -> bool:
        return any(m.id == model_id for m in self.models)

    def register_model(self, model: Model) -> ModelRegistry:
        """Upsert by id, replacing the whole model (the chain's RegisterModel through governance)."""
        return ModelRegistry.of((*self.models, model))

    def delete_governance_model(self, model_id: str) -> ModelRegistry:
        return ModelRegistry(tuple(m for m in self.models if m.id != model_id))


def apply_hardware_diff(
    registry: ModelRegistry,
    existing: HardwareNodes | None,
    *,
    creator: str,
    new_or_modified: Iterable[HardwareNode] = (),
    removed: Iterable[HardwareNode] = (),
) -> HardwareNodes:
    """The chain's MsgSubmitHardwareDiff: validate, remove by local_id, upsert by local_id, sort.

    Every model of every new or modified node must be a governance model, else InvalidModelError
    names all offending ids and nothing changes. Removed nodes are not validated (a node that lists a
    since-deleted model must still be removable). An empty result is still a record.
    """
    upserts = tuple(new_or_modified)
    unknown = [mid for node in upserts for mid in node.models if not registry.is_valid_governance_model(mid)]
    if unknown:
        raise InvalidModelError(unknown)
    nodes = {node.local_id: node for node in (existing.hardware_nodes if existing else ())}
    for node in removed:
        nodes.pop(node.local_id, None)
    for node in upserts:
        nodes[node.local_id] = node
    return HardwareNodes(participant=creator, hardware_nodes=tuple(nodes[lid] for lid in sorted(nodes)))


# reference/chain-logic.md §14, mainnet genesis values (DESIGN.md §6: the devnet's genesis models).
GENESIS_MODELS: tuple[Model, ...] = (
    Model(
        id="Qwen/QwQ-32B",
        proposed_by="genesis",
        units_of_compute_per_token=1000,
        hf_repo="Qwen/QwQ-32B",
        hf_commit="976055f8c83f394f35dbd3ab09a285a984907bd0",
        model_args=("--quantization", "fp8", "--kv-cache-dtype", "fp8"),
        v_ram=80,
        throughput_per_nonce=1000,
        validation_threshold=Decimal(98, -2),
    ),
    Model(
        id="Qwen/Qwen2.5-7B-Instruct",
        proposed_by="genesis",
        units_of_compute_per_token=100,
        hf_repo="Qwen/Qwen2.5-7B-Instruct",
        hf_commit="a09a35458c702b33eeacc393d103063234e8bc28",
        model_args=("--quantization", "fp8"),
        v_ram=24,
        throughput_per_nonce=10000,
        validation_threshold=Decimal(98, -2),
    ),
)
