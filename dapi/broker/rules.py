"""The broker's rules as pure functions over plain data (reference/broker.md with DESIGN.md §5's fixes).

Nothing here does I/O or reads a clock; the broker, the reconciler and the tests call these with the
state they hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dapi.broker.state import AdminState, NodeState, NodeStatus, PocStatus
from dapi.chain.epochs import Phase
from dapi.config import ModelArgs, NodeConfig
from dapi.gen.inference.inference.epoch_group_data_pb2 import MLNodeInfo
from dapi.gen.inference.inference.hardware_node_pb2 import Hardware, HardwareNode, HardwareNodeStatus
from dapi.gen.inference.inference.model_pb2 import Model
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitHardwareDiff

__all__ = [
    "POC_SLOT",
    "PRE_POC_SLOT",
    "ModelChoice",
    "Target",
    "choose_inference_model",
    "hardware_diff",
    "hardware_nodes_equal",
    "inference_up_target",
    "merge_model_args",
    "needs_reconcile",
    "poc_phase_target",
    "poc_slot_models",
    "should_be_operational",
    "should_continue_inference",
    "to_chain_hardware_node",
    "unavailability_reason",
]

PRE_POC_SLOT = 0
POC_SLOT = 1


# --- admin and POC_SLOT --------------------------------------------------------------------------


def should_be_operational(admin: AdminState, latest_epoch: int, phase: Phase) -> bool:
    """reference/broker.md §1.11: an enable counts at once only in Inference, a disable from the next epoch."""
    if admin.enabled:
        return latest_epoch > admin.epoch or phase == Phase.INFERENCE
    return admin.epoch >= latest_epoch


def poc_slot_models(epoch_ml_nodes: Mapping[str, MLNodeInfo]) -> list[str]:
    """The model ids (sorted) whose allocation gives this node POC_SLOT."""
    return sorted(
        model_id
        for model_id, info in epoch_ml_nodes.items()
        if len(info.timeslot_allocation) > POC_SLOT and info.timeslot_allocation[POC_SLOT]
    )


def should_continue_inference(epoch_ml_nodes: Mapping[str, MLNodeInfo]) -> bool:
    """POC_SLOT: the chain keeps this node serving inference during PoC (any of its models says so)."""
    return bool(poc_slot_models(epoch_ml_nodes))


# --- phase commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """An intended (status, PoC status) pair, and why the phase command chose it (for the log)."""

    status: NodeStatus
    poc_status: PocStatus = PocStatus.IDLE
    reason: str = field(default="", compare=False)


def _models(ids: Sequence[str]) -> str:
    return ("model " if len(ids) == 1 else "models ") + ", ".join(ids)


def poc_phase_target(state: NodeState, latest_epoch: int, phase: Phase, poc_status: PocStatus) -> Target:
    """StartPoc (GENERATING) and InitValidate (VALIDATING): disabled → STOPPED, POC_SLOT → INFERENCE, else POC.

    One refinement of the reference: a node that is enabled but not yet operational (registered or
    re-enabled during this PoC) keeps serving if the chain gave it POC_SLOT — DESIGN.md §4.6 says a POC_SLOT
    node is never stopped during PoC; a disabled node is still stopped whatever its slot.
    """
    admin = state.admin_state
    operational = should_be_operational(admin, latest_epoch, phase)
    if not operational and not admin.enabled:
        return Target(NodeStatus.STOPPED, reason=f"admin-disabled (in epoch {admin.epoch})")
    slots = poc_slot_models(state.epoch_ml_nodes)
    if slots:
        return Target(NodeStatus.INFERENCE, reason=f"POC_SLOT of {_models(slots)}")
    if not operational:
        return Target(NodeStatus.STOPPED, reason=f"enabled in epoch {admin.epoch}: takes part from the next PoC")
    if state.epoch_ml_nodes:
        reason = f"no POC_SLOT in {_models(sorted(state.epoch_ml_nodes))}"
    else:
        reason = "no POC_SLOT: the chain has not placed the node in an epoch yet"
    if not admin.enabled:
        reason += f"; admin-disabled in epoch {admin.epoch}, which applies from the next epoch"
    return Target(NodeStatus.POC, poc_status, reason)


def inference_up_target(state: NodeState, latest_epoch: int, phase: Phase) -> Target:
    """InferenceUpAll: not operational → STOPPED, TRAINING left alone, else INFERENCE (PoC intent reset)."""
    admin = state.admin_state
    if not should_be_operational(admin, latest_epoch, phase):
        if not admin.enabled:
            return Target(NodeStatus.STOPPED, reason=f"admin-disabled (in epoch {admin.epoch})")
        return Target(NodeStatus.STOPPED, reason=f"enabled in epoch {admin.epoch}: serves from the Inference phase")
    if state.intended_status is NodeStatus.TRAINING:
        return Target(NodeStatus.TRAINING, reason="training: left alone")
    return Target(NodeStatus.INFERENCE, reason="inference phase: every operational node serves")


# --- model choice and arguments ------------------------------------------------------------------


def _is_flag(token: str) -> bool:
    return token.startswith("--")


def merge_model_args(epoch_args: Sequence[str], local_args: Sequence[str]) -> list[str]:
    """reference/broker.md §3.3: epoch args all kept; local flags appended only for keys the epoch lacks.

    A flag is a token starting with `--` and its key is the whole token (`--x=1` ≠ `--x`); a following
    non-flag token is its value. Bare local tokens are dropped; local keys are not recorded.
    """
    merged: list[str] = []
    epoch_keys: set[str] = set()
    i = 0
    while i < len(epoch_args):
        token = epoch_args[i]
        merged.append(token)
        if _is_flag(token):
            epoch_keys.add(token)
            if i + 1 < len(epoch_args) and not _is_flag(epoch_args[i + 1]):
                merged.append(epoch_args[i + 1])
                i += 1
        i += 1
    i = 0
    while i < len(local_args):
        token = local_args[i]
        if _is_flag(token):
            has_value = i + 1 < len(local_args) and not _is_flag(local_args[i + 1])
            if token not in epoch_keys:
                merged.append(token)
                if has_value:
                    merged.append(local_args[i + 1])
            if has_value:
                i += 1
        i += 1
    return merged


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """What InferenceUp loads: the model id, the merged args, and where the choice came from."""

    model_id: str
    args: tuple[str, ...]
    source: str  # "epoch" or "config"


def choose_inference_model(
    config_models: Mapping[str, ModelArgs],
    epoch_models: Mapping[str, Model],
    epoch_ml_nodes: Mapping[str, MLNodeInfo],
    governance: Mapping[str, Model] | None = None,
) -> ModelChoice | None:
    """DESIGN.md §5 fix 2: the epoch model marked PRE_POC_SLOT (lowest id on ties), else the configured one.

    With epoch models but none marked PRE_POC_SLOT the lowest epoch model id is taken: the chain did
    assign the node to it. With no epoch models (a node the chain has not placed yet) the node serves
    its lowest configured model id that is a governance model, with the governance model's args merged
    like an epoch snapshot's. None when there is nothing to serve.
    """
    if epoch_models:
        marked = sorted(
            model_id
            for model_id in epoch_models
            if (info := epoch_ml_nodes.get(model_id)) is not None
            and len(info.timeslot_allocation) > PRE_POC_SLOT
            and info.timeslot_allocation[PRE_POC_SLOT]
        )
        model_id = marked[0] if marked else sorted(epoch_models)[0]
        snapshot = epoch_models[model_id]
        local = config_models.get(model_id)
        args = merge_model_args(list(snapshot.model_args), local.args if local else [])
        return ModelChoice(snapshot.id or model_id, tuple(args), "epoch")
    candidates = sorted(config_models)
    if governance:
        candidates = [m for m in candidates if m in governance]
    if not candidates:
        return None
    model_id = candidates[0]
    gov = governance.get(model_id) if governance else None
    args = merge_model_args(list(gov.model_args) if gov else [], config_models[model_id].args)
    return ModelChoice(model_id, tuple(args), "config")


# --- reconciliation ------------------------------------------------------------------------------


def needs_reconcile(state: NodeState, desired_model: str | None = None) -> bool:
    """Whether a job should be dispatched to move the node towards its intent.

    Intents without a job (UNKNOWN before any phase command, TRAINING, FAILED, POC without a PoC
    sub-target) never need one. A node serving another model than the one it should (the epoch moved
    it) needs an InferenceUp although both statuses say INFERENCE.
    """
    intended = state.intended_status
    if intended in (NodeStatus.UNKNOWN, NodeStatus.TRAINING, NodeStatus.FAILED):
        return False
    if intended is NodeStatus.POC and state.poc_intended_status is PocStatus.IDLE:
        return False
    if intended != state.current_status:
        return True
    if intended is NodeStatus.POC:
        return state.poc_intended_status != state.poc_current_status
    if intended is NodeStatus.INFERENCE and desired_model is not None and state.served_model is not None:
        return state.served_model != desired_model
    return False


# --- inference routing ---------------------------------------------------------------------------


def unavailability_reason(
    config: NodeConfig,
    state: NodeState,
    *,
    model: str,
    version: str,
    latest_epoch: int,
    phase: Phase,
    served_model: str | None,
) -> str | None:
    """Why a node cannot take a request for `model` now (reference/broker.md §6.1), or None if it can.

    Fix 3: the model must be the one the node serves this epoch (`served_model`, the InferenceUp choice
    from EpochModels or else the config), not merely one listed in its config.
    """
    if state.intended_status is not NodeStatus.INFERENCE:
        return f"intended status is {state.intended_status.name}"
    if state.current_status is not NodeStatus.INFERENCE:
        return f"current status is {state.current_status.name}"
    if state.reconcile_info is not None:
        return "a reconciliation job is in flight"
    if state.lock_count >= config.max_concurrent:
        return f"at capacity ({state.lock_count}/{config.max_concurrent})"
    if not should_be_operational(state.admin_state, latest_epoch, phase):
        return "disabled by the operator"
    if version and config.version != version:
        return f"version {config.version!r} is not {version!r}"
    if served_model != model:
        return f"serves {served_model!r}, not {model!r}"
    return None


# --- hardware diff -------------------------------------------------------------------------------


def to_chain_hardware_node(config: NodeConfig, status: NodeStatus) -> HardwareNode:
    """reference/broker.md §5.6: the chain's record of a local node (sorted config models, PoC port)."""
    return HardwareNode(
        local_id=config.id,
        status=HardwareNodeStatus.ValueType(int(status)),
        models=sorted(config.models),
        hardware=[Hardware(type=h.type, count=h.count) for h in config.hardware],
        host=config.host,
        port=str(config.poc_port),
    )


def hardware_nodes_equal(a: HardwareNode, b: HardwareNode) -> bool:
    """Equal for the chain's purposes; host and port count too (fix 9), order of lists does not."""
    return (
        a.local_id == b.local_id
        and a.status == b.status
        and a.host == b.host
        and a.port == b.port
        and sorted(a.models) == sorted(b.models)
        and sorted((h.type, h.count) for h in a.hardware) == sorted((h.type, h.count) for h in b.hardware)
    )


def hardware_diff(
    participant: str, local: Iterable[HardwareNode], on_chain: Iterable[HardwareNode]
) -> MsgSubmitHardwareDiff | None:
    """The MsgSubmitHardwareDiff that makes the chain's list equal the local one, or None if it already is.

    Entries follow the local (registration) order and the chain's order, so a diff is deterministic.
    """
    chain_by_id = {n.local_id: n for n in on_chain}
    local_list = list(local)
    local_ids = {n.local_id for n in local_list}
    changed = [
        n for n in local_list if n.local_id not in chain_by_id or not hardware_nodes_equal(n, chain_by_id[n.local_id])
    ]
    removed = [n for n in chain_by_id.values() if n.local_id not in local_ids]
    if not changed and not removed:
        return None
    return MsgSubmitHardwareDiff(creator=participant, newOrModified=changed, removed=removed)
