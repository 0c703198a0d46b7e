"""The POC_SLOT decision log (plan 6.2.3): at each phase command, what every node does and why."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dapi.broker.reconciler import desired_choice
from dapi.broker.registry import NodeEntry
from dapi.broker.rules import Target
from dapi.broker.state import NodeDiagnostics, NodeStatus, PocStatus
from dapi.gen.inference.inference.model_pb2 import Model
from dapi.logs import get_logger

__all__ = ["decision_word", "log_decision", "node_diagnostics"]

log = get_logger("dapi.broker")


def decision_word(command: str, target: Target) -> str:
    """The decision in a word or two: mine, validate, keep serving, serve, stop, keep training."""
    if target.status is NodeStatus.POC:
        return "validate" if target.poc_status is PocStatus.VALIDATING else "mine"
    if target.status is NodeStatus.INFERENCE:
        return "serve" if command == "InferenceUpAll" else "keep serving"
    if target.status is NodeStatus.TRAINING:
        return "keep training"
    return "stop"


def log_decision(
    entry: NodeEntry, command: str, latest_epoch: int, target: Target, governance: Mapping[str, Model]
) -> None:
    """One line per node per phase command and epoch: does it mine, keep serving or stop, and why.

    Commands repeat every block during PoC; a line is written again only when the decision changes.
    """
    key = (latest_epoch, target.status, target.poc_status, target.reason)
    if entry.decisions.get(command) == key:
        return
    entry.decisions[command] = key
    st = entry.state
    fields: dict[str, object] = {
        "command": command,
        "node_id": entry.node.id,
        "decision": decision_word(command, target),
        "reason": target.reason,
        "epoch": latest_epoch,
        "current_status": st.current_status.name,
    }
    if target.status is NodeStatus.INFERENCE:
        choice = desired_choice(entry, governance)
        fields["model"] = choice.model_id if choice else None
    if st.failure_reason:  # its last command failed (cleared by the next success)
        fields["failure_reason"] = st.failure_reason
    log.info("phase command decision", **fields)


def node_diagnostics(
    entries: Iterable[NodeEntry], command: str | None, now: float, epoch_data_epoch: int | None
) -> dict[str, NodeDiagnostics]:
    """Per node id: failures, seconds to its retry, and the decision ``command`` last logged for it."""
    out: dict[str, NodeDiagnostics] = {}
    for entry in entries:
        decision = entry.decisions.get(command) if command else None
        waiting = entry.failures > 0 and entry.retry_at > now
        out[entry.node.id] = NodeDiagnostics(
            failures=entry.failures,
            retry_in=round(entry.retry_at - now, 3) if waiting else None,
            decision=decision_word(command, Target(decision[1], decision[2])) if command and decision else None,
            reason=decision[3] if decision else None,
            epoch_data_epoch=epoch_data_epoch,
        )
    return out
