"""CometBFT 0.38's JSON shapes of blocks, tx results and events, as the devnet's RPC port serves them.

Heights and gas are decimal strings, hashes uppercase hex, byte fields base64.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from dapi.devnet.ledger import Block, Ledger, TxEvent, TxRecord

__all__ = ["block_json", "block_results_json", "comet_hash", "events_json", "flatten_events", "new_block_event",
           "tx_result_json"]


def comet_hash(*parts: object) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest().upper()


def _block_id(block_hash: str) -> dict[str, Any]:
    if not block_hash:
        return {"hash": "", "parts": {"total": 0, "hash": ""}}
    return {"hash": block_hash, "parts": {"total": 1, "hash": comet_hash("parts", block_hash)}}


def events_json(events: tuple[TxEvent, ...]) -> list[dict[str, Any]]:
    return [
        {"type": e.type, "attributes": [{"key": k, "value": v, "index": True} for k, v in e.attributes]}
        for e in events
    ]


def tx_result_json(record: TxRecord) -> dict[str, Any]:
    """ExecTxResult as CometBFT 0.38 prints it."""
    return {
        "code": record.code,
        "data": base64.b64encode(record.data).decode() if record.data else None,
        "log": record.log,
        "info": "",
        "gas_wanted": str(record.gas_wanted),
        "gas_used": str(record.gas_used),
        "events": events_json(record.events),
        "codespace": record.codespace,
    }


def block_json(ledger: Ledger, block: Block) -> dict[str, Any]:
    """The `block` result: {block_id, block{header, data, evidence, last_commit}}."""
    previous = ledger.block(block.height - 1)
    header = {
        "version": {"block": "11", "app": "0"},
        "chain_id": ledger.chain_id,
        "height": str(block.height),
        "time": block.time,
        "last_block_id": _block_id(block.prev_hash),
        "last_commit_hash": comet_hash("commit", block.prev_hash) if block.prev_hash else "",
        "data_hash": comet_hash("data", *(t.hash for t in block.txs)),
        "validators_hash": comet_hash("validators", ledger.chain_id),
        "next_validators_hash": comet_hash("validators", ledger.chain_id),
        "consensus_hash": comet_hash("consensus", ledger.chain_id),
        # CometBFT's header carries the app hash of the state after the previous block.
        "app_hash": previous.app_hash if previous is not None else "",
        "last_results_hash": comet_hash("results", block.prev_hash) if block.prev_hash else "",
        "evidence_hash": comet_hash("evidence"),
        "proposer_address": comet_hash("proposer", ledger.chain_id)[:40],
    }
    return {
        "block_id": _block_id(block.hash),
        "block": {
            "header": header,
            "data": {"txs": [base64.b64encode(t.raw).decode() for t in block.txs]},
            "evidence": {"evidence": []},
            "last_commit": {
                "height": str(max(block.height - 1, 0)),
                "round": 0,
                "block_id": _block_id(block.prev_hash),
                "signatures": [],
            },
        },
    }


def block_results_json(block: Block) -> dict[str, Any]:
    """The `block_results` result: the block's tx results with their events (null when it has no tx)."""
    return {
        "height": str(block.height),
        "txs_results": [tx_result_json(t) for t in block.txs] or None,
        "finalize_block_events": [
            {"type": "inference_epoch_stage", "attributes": [{"key": "stage", "value": s.value, "index": True}]}
            for s in block.stages
        ],
        "validator_updates": [],
        "consensus_param_updates": None,
        "app_hash": base64.b64encode(bytes.fromhex(block.app_hash)).decode(),
    }


def new_block_event(ledger: Ledger, block: Block) -> dict[str, Any]:
    """The `data.value` of a tendermint/event/NewBlock event (CometBFT 0.38: with result_finalize_block)."""
    shape = block_json(ledger, block)
    return {
        "block": shape["block"],
        "block_id": shape["block_id"],
        "result_finalize_block": {
            "events": [
                *({"type": "inference_epoch_stage", "attributes": [{"key": "stage", "value": s.value, "index": True}]}
                  for s in block.stages),
                *({"type": e.type, "attributes": [{"key": k, "value": v, "index": True} for k, v in e.attributes]}
                  for e in block.events),
            ],
            "tx_results": [tx_result_json(t) for t in block.txs],
            "validator_updates": [],
            "consensus_param_updates": None,
            "app_hash": base64.b64encode(bytes.fromhex(block.app_hash)).decode(),
        },
    }


def flatten_events(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for event in events:
        for attribute in event.get("attributes", []):
            out.setdefault(f"{event['type']}.{attribute['key']}", []).append(str(attribute["value"]))
    return out
