"""The dashboard document's pure pieces: the phase bar of an epoch, one ML node's row, small conversions."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dapi.broker.state import NodeDiagnostics, NodeResponse
from dapi.chain.epochs import EpochContext, Phase
from dapi.chain.outbox_store import DeadLetter
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitPocBatch

__all__ = ["POC_BATCH", "inference_totals", "iso", "node_row", "phase_bar", "poc_stage", "validation_counts",
           "validation_view"]

POC_BATCH = "/inference.inference.MsgSubmitPocBatch"
VALIDATION_KEYS = ("selected", "pending", "sent", "landed", "failed", "required")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def phase_bar(ctx: EpochContext, height: int) -> dict[str, Any]:
    """The blocks from this epoch's PoC start to the next one, as phase segments, with the named boundaries.

    Before the first PoC (the genesis epoch) the bar runs from block 0 to the first PoC start.
    """
    if ctx.is_genesis:
        first = ctx.next_poc_start
        return {"start": 0, "end": first, "position": height,
                "segments": [{"phase": str(Phase.INFERENCE), "start": 0, "end": first}],
                "boundaries": [{"name": "PoC start", "height": first, "passed": height >= first}]}
    named = [
        ("PoC start", ctx.start_of_poc),
        ("generation wind-down", ctx.poc_generation_wind_down),
        ("end of generation", ctx.end_of_poc_generation),
        ("validation start", ctx.start_of_poc_validation),
        ("validation wind-down", ctx.poc_validation_wind_down),
        ("end of validation", ctx.end_of_poc_validation),
        ("set new validators", ctx.set_new_validators),
        ("claim rewards", ctx.claim_money),
        ("next PoC start", ctx.next_poc_start),
    ]
    cuts = [
        (Phase.POC_GENERATE, ctx.start_of_poc, ctx.poc_generation_wind_down),
        (Phase.POC_GENERATE_WIND_DOWN, ctx.poc_generation_wind_down, ctx.start_of_poc_validation),
        (Phase.POC_VALIDATE, ctx.start_of_poc_validation, ctx.poc_validation_wind_down),
        (Phase.POC_VALIDATE_WIND_DOWN, ctx.poc_validation_wind_down, ctx.end_of_poc_validation),
        (Phase.INFERENCE, ctx.end_of_poc_validation, ctx.next_poc_start),
    ]
    return {
        "start": ctx.start_of_poc,
        "end": ctx.next_poc_start,
        "position": height,
        "segments": [{"phase": str(p), "start": a, "end": b} for p, a, b in cuts if b > a],
        "boundaries": [{"name": n, "height": h, "passed": height >= h} for n, h in named],
    }


def _slots(response: NodeResponse) -> tuple[bool, bool]:
    pre = poc = False
    for info in response.state.epoch_ml_nodes.values():
        alloc = list(info.timeslot_allocation)
        pre = pre or (len(alloc) > 0 and alloc[0])
        poc = poc or (len(alloc) > 1 and alloc[1])
    return pre, poc


def node_row(response: NodeResponse, diag: NodeDiagnostics | None) -> dict[str, Any]:
    st, node = response.state, response.node
    pre, poc = _slots(response)
    return {
        "id": node.id,
        "node_num": node.node_num,
        "intended_status": st.intended_status.name,
        "current_status": st.current_status.name,
        "poc_intended_status": st.poc_intended_status.value,
        "poc_current_status": st.poc_current_status.value,
        "served_model": st.served_model,
        "epoch_models": sorted(st.epoch_models),
        "pre_poc_slot": pre,
        "poc_slot": poc,
        "failure_reason": st.failure_reason,
        "failures": diag.failures if diag else 0,
        "retry_in_seconds": diag.retry_in if diag else None,
        "decision": diag.decision if diag else None,
        "decision_reason": diag.reason if diag else None,
        "enabled": st.admin_state.enabled,
        "admin_epoch": st.admin_state.epoch,
        "in_flight": st.lock_count,
        "max_concurrent": node.config.max_concurrent,
        "weight": sum(info.poc_weight for info in st.epoch_ml_nodes.values()),
    }


def inference_totals(inference: Mapping[str, Any] | None) -> int | None:
    if not inference:
        return None
    total = 0
    for role in ("ta", "executor"):
        part = inference.get(role) or {}
        total += int(part.get("ok", 0)) + sum(int(v) for v in (part.get("failed") or {}).values())
    return total


def poc_stage(letter: DeadLetter) -> int | None:
    """The PoC stage a dead-lettered batch was for (None for other messages or an unreadable body)."""
    if letter.type_url != POC_BATCH:
        return None
    msg = MsgSubmitPocBatch()
    try:
        msg.ParseFromString(letter.body)
    except Exception:
        return None
    return msg.poc_stage_start_block_height


def validation_counts(counts: Mapping[str, Any]) -> dict[str, int]:
    """The validation counters of a status object (its other keys — claim, flags, per-epoch maps — left out)."""
    return {k: int(counts[k]) for k in VALIDATION_KEYS if isinstance(counts.get(k), int)}


def validation_view(validation: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The dashboard's validation section: the counters and whether the daemon validates at all."""
    if validation is None:
        return None
    return {**validation_counts(validation), "enabled": bool(validation.get("enabled", True))}
