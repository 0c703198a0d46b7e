"""Prometheus metrics of one daemon, in a registry of its own (several daemons can share a test process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:  # the record's shape only: metrics sit below every component
    from dapi.inference.stats import InferenceRecord


class Metrics:
    """The daemon's Prometheus metrics (blocks, phase, ML nodes, batches, txs, outbox), served at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.blocks_processed = Counter("dapi_blocks_processed", "Blocks processed by the dispatcher", registry=r)
        self.last_height = Gauge("dapi_last_processed_height", "Height of the last processed block", registry=r)
        self.blocks_skipped = Counter(
            "dapi_blocks_skipped", "Heights whose transitions never ran, by why they were skipped", ["reason"],
            registry=r,
        )
        self.block_retrying_height = Gauge(
            "dapi_block_retrying_height", "Height the block follower keeps retrying after chain errors (0: none)",
            registry=r,
        )
        self.phase = Gauge("dapi_epoch_phase", "1 for the current epoch phase", ["phase"], registry=r)
        self.nodes_by_status = Gauge(
            "dapi_ml_nodes", "ML nodes by current status", ["status"], registry=r
        )
        self.batches_accepted = Counter(
            "dapi_poc_batches_accepted", "PoC batches answered 200 (durably queued)", ["kind"], registry=r
        )
        self.batches_refused = Counter(
            "dapi_poc_batches_refused",
            "PoC batches refused: not from an own ML node (unknown callback URL, shared route off, another "
            "participant's key, a PoC stage the nodes were never started for) or late (reason 'late': the "
            "stage's exchange window had closed)",
            ["kind", "reason"], registry=r,
        )
        self.txs_landed = Counter("dapi_txs_landed", "Transactions included with code 0", ["type"], registry=r)
        self.tx_failures = Counter(
            "dapi_tx_failures", "Transactions rejected at CheckTx or failed in a block", ["stage", "code"], registry=r
        )
        self.tx_retries = Counter("dapi_tx_retries", "Broadcasts retried after a transient failure", registry=r)
        self.outbox_depth = Gauge("dapi_outbox_depth", "Messages not yet landed or dead-lettered", registry=r)
        self.chain_queries = Gauge("dapi_chain_queries", "Chain queries sent since start", registry=r)
        self.inference_requests = Counter(
            "dapi_inference_requests", "Chat completions by role (ta, executor), model and outcome ('ok' or why not)",
            ["role", "model", "outcome"], registry=r,
        )
        self.inference_seconds = Histogram(
            "dapi_inference_seconds", "Duration of chat completions served in full, by role", ["role"], registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.inference_first_byte_seconds = Histogram(
            "dapi_inference_first_byte_seconds", "Time to the answer's first byte, by role", ["role"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.inference_tokens = Counter(
            "dapi_inference_tokens", "Tokens (prompt + completion) of chat completions served in full",
            ["role", "model"], registry=r,
        )
        self.inference_retries = Counter(
            "dapi_inference_retries", "Executors the TA skipped (refused, failed or timed out before answering)",
            registry=r,
        )
        self.validations = Gauge(
            "dapi_inference_validations",
            "Inference validations: selected, pending, sent, landed, failed (value not above the model's "
            "threshold) since the queue began, and required (what the chain's claim check asks of the latest epoch)",
            ["kind"], registry=r,
        )
        self.validation_claims_forced = Counter(
            "dapi_validation_claims_forced",
            "Reward claims sent at the claim deadline with required validations still missing", registry=r,
        )
        self.last_claim_amount = Gauge("dapi_last_claim_amount", "What the last reward claim paid (ngonka)",
                                       registry=r)
        self.last_claim_paid = Gauge("dapi_last_claim_paid", "1 if the last reward claim paid something, else 0",
                                     registry=r)

    def inference_request(self, record: InferenceRecord) -> None:
        self.inference_requests.labels(role=record.role, model=record.model, outcome=record.outcome[:60]).inc()
        if record.outcome == "ok":
            self.inference_seconds.labels(role=record.role).observe(record.seconds)
            self.inference_tokens.labels(role=record.role, model=record.model).inc(record.tokens)
        if record.first_byte is not None:
            self.inference_first_byte_seconds.labels(role=record.role).observe(record.first_byte)

    def inference_retried(self) -> None:
        self.inference_retries.inc()

    def batches_accepted_count(self, kind: str = "generated") -> int:
        return int(self.batches_accepted.labels(kind=kind)._value.get())

    def batches_refused_count(self, *, late: bool | None = None) -> int:
        """Refused batches: all (None), only those refused as late (True), or all but those (False)."""
        return int(sum(sample.value for metric in self.batches_refused.collect() for sample in metric.samples
                       if sample.name.endswith("_total")
                       and (late is None or (sample.labels.get("reason") == "late") is late)))

    def txs_landed_count(self, type_name: str) -> int:
        return int(self.txs_landed.labels(type=type_name)._value.get())

    def tx_failures_count(self) -> int:
        """Transactions failed for good, every stage and code (the outbox counts one once it is dead-lettered)."""
        return int(sum(sample.value for metric in self.tx_failures.collect() for sample in metric.samples
                       if sample.name.endswith("_total")))

    def outbox_depth_value(self) -> int:
        return int(self.outbox_depth._value.get())
