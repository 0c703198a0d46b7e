"""Health of a devnet run, as a participant judges it, checked block by block against the chain.

* every epoch was formed;
* in every PoC, each own ML node followed its allocation: POC_SLOT nodes kept serving inference and got
  no ``init/generate``, the others mined;
* every PoC batch the daemon accepted landed on chain, with the ML node's id, and none was refused (on
  the devnet only the own ML nodes post, each on the URL its InitDto gave it);
* ``/v1/models`` equals the effective epoch's model snapshots at every epoch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from dapi.chain.epochs import EpochContext
from dapi.chain.gojson import go_json
from dapi.devnet.ledger.inferences import InferenceStatus
from dapi.devnet.wire.convert import model_to_proto

if TYPE_CHECKING:
    from dapi.testbed.session import DevnetSession


@dataclass
class PocCheck:
    """What one own ML node did during one PoC."""

    epoch: int
    node_id: str
    poc_slot: bool
    init_generate_calls: int = 0
    state_mid_poc: str = ""

    @property
    def ok(self) -> bool:
        if self.poc_slot:
            return self.init_generate_calls == 0 and self.state_mid_poc == "INFERENCE"
        return self.init_generate_calls >= 1 and self.state_mid_poc == "POW"

    def as_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "node_id": self.node_id, "poc_slot": self.poc_slot,
                "init_generate_calls": self.init_generate_calls, "state_mid_poc": self.state_mid_poc,
                "ok": self.ok}


@dataclass
class ModelsCheck:
    """Whether ``/v1/models`` served the effective epoch's model snapshots at one epoch."""

    epoch: int
    expected: list[str]
    served: list[str]
    equal: bool

    def as_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "expected": self.expected, "served": self.served, "equal": self.equal}


@dataclass
class HealthWatch:
    """Follows a :class:`DevnetSession` epoch by epoch and collects what went wrong.

    Args:
        session: the running devnet and daemon to watch.
        on_epoch: called with the epoch's JSON report as each watched epoch becomes effective.
    """

    session: DevnetSession
    on_epoch: Callable[[dict[str, Any]], None] | None = None  # called as each watched epoch becomes effective
    poc: list[PocCheck] = field(default_factory=list)
    models: list[ModelsCheck] = field(default_factory=list)
    formed: list[int] = field(default_factory=list)
    own_batches_on_chain: dict[str, int] = field(default_factory=dict)  # batch_id -> nonces
    own_batches_without_node: int = 0
    problems: list[str] = field(default_factory=list)

    async def run(self, epochs: int | None) -> None:
        """Watch PoC 1..``epochs`` (for ever with None) and the epochs they form until they are effective."""
        devnet = self.session.devnet
        params = devnet.genesis.epoch_params
        epoch = 0
        while epochs is None or epoch < epochs:
            epoch += 1
            ctx = EpochContext(epoch, epoch * params.epoch_length - params.epoch_shift, params)
            await self._watch_poc(ctx)
            timeout = max(60.0, 20 * params.epoch_length * devnet.block_time)
            report = await devnet.wait_for_formed(epoch, timeout=timeout)
            self.formed.append(report.epoch_index)
            await devnet.wait_for_height(ctx.set_new_validators + 1, timeout=120)
            await self._wait_daemon_at(ctx.set_new_validators + 1)
            await self._check_models(epoch)
            self._collect_batches(ctx.start_of_poc)
            if self.on_epoch is not None:
                self.on_epoch({"event": "epoch", **report.as_json(),
                               "poc_slot_policy": str(devnet.genesis.poc_slot_policy),
                               "poc": [c.as_json() for c in self.poc if c.epoch == epoch],
                               "models_ok": self.models[-1].equal if self.models else None,
                               **self._validation_report(epoch - 1),
                               "invalidated": self.invalidated(epoch - 1),
                               "demand_measured": self._demand_measured(epoch - 1)})

    def _validation_report(self, epoch: int) -> dict[str, Any]:
        """The own participant's validations of ``epoch`` (the one that just ended) and its latest answered claim."""
        service = self.session.daemon.validation
        if service is None:
            return {"validations": None, "claim": None}
        claim = service.last_claim
        return {
            "validations": service.epoch_report(epoch),
            "claim": None if claim is None else {k: claim[k] for k in ("epoch", "code", "amount", "result")},
        }

    def _demand_measured(self, epoch: int) -> dict[str, Any] | None:
        """What the pre-PoC block measured over ``epoch``'s Inference phase, just before this epoch's PoC.

        This epoch's own vectors (`real_throughput_vector` at the top level) are measured only before the
        next PoC, after this line is written; the summary's `throughput` carries them.
        """
        report = self.session.devnet.report(epoch) if epoch >= 1 else None
        if report is None:
            return None
        return {"epoch": epoch, "real_throughput_vector": list(report.real_throughput_vector),
                "throughput_shortfalls": [s.as_json() for s in report.throughput_shortfalls],
                "pre_poc_selection_height": report.pre_poc_selection_height}

    def invalidated(self, epoch: int | None = None) -> dict[str, int]:
        """Inferences INVALIDATED so far, per executor participant's name: of ``epoch`` (the epoch effective
        when they completed), or of every epoch with None."""
        devnet = self.session.devnet
        names = {p.address: p.name for p in devnet.genesis.participants}
        counts: dict[str, int] = {}
        for record in devnet.ledger.state.inferences.values():
            if record.status is InferenceStatus.INVALIDATED and (epoch is None or record.epoch_id == epoch):
                name = names.get(record.executed_by, record.executed_by)
                counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items()))

    async def _wait_daemon_at(self, height: int) -> None:
        view = self.session.daemon.view
        deadline = asyncio.get_running_loop().time() + 30
        while not (view.snapshot and view.snapshot.height >= height):
            if asyncio.get_running_loop().time() > deadline:
                self.problems.append(f"the daemon did not reach height {height}")
                return
            await asyncio.sleep(0.01)

    def _allocation(self, epoch: int) -> dict[str, bool]:
        """POC_SLOT per own node for the PoC of ``epoch``: set in the group formed for ``epoch - 1``."""
        devnet = self.session.devnet
        own = devnet.own
        report = devnet.report(epoch - 1) if epoch > 1 else None
        member = report.member(own.address) if report else None
        marks = {n.node_id: n.poc_slot for n in member.nodes} if member else {}
        return {node.local_id: marks.get(node.local_id, False) for node in own.nodes}

    async def _watch_poc(self, ctx: EpochContext) -> None:
        devnet = self.session.devnet
        await devnet.wait_for_height(ctx.start_of_poc - 1, timeout=120)
        allocation = self._allocation(ctx.epoch_index)
        before = {node_id: len(devnet.mlnodes.calls(node_id)) for node_id in allocation}
        await devnet.wait_for_height(ctx.end_of_poc_generation - 1, timeout=120)
        mid = {node_id: devnet.mlnodes.node(node_id).state.value for node_id in allocation}
        await devnet.wait_for_height(ctx.end_of_poc_validation, timeout=120)
        for node_id, poc_slot in allocation.items():
            calls = devnet.mlnodes.calls(node_id)[before[node_id]:]
            generate = sum(1 for c in calls if c.method == "POST" and c.path.endswith("/pow/init/generate"))
            check = PocCheck(ctx.epoch_index, node_id, poc_slot, generate, mid[node_id])
            self.poc.append(check)
            if not check.ok:
                self.problems.append(f"PoC of epoch {ctx.epoch_index}: node {node_id} did not follow its allocation "
                                     f"(POC_SLOT={poc_slot}, init/generate calls={generate}, state={mid[node_id]})")

    async def _check_models(self, epoch: int) -> None:
        groups = self.session.devnet.ledger.epoch_groups(epoch)
        expected: list[dict[str, Any]] = []
        if groups is not None:
            _, subgroups = groups
            expected = [go_json(model_to_proto(g.model_snapshot)) for g in subgroups if g.model_snapshot is not None]
        async with httpx.AsyncClient(timeout=10) as client:
            served = (await client.get(self.session.public_url + "/v1/models")).json()["models"]
        check = ModelsCheck(epoch, [m.get("id", "") for m in expected], [m.get("id", "") for m in served],
                            served == expected)
        self.models.append(check)
        if not check.equal:
            self.problems.append(f"epoch {epoch}: /v1/models {check.served} differs from the snapshots "
                                 f"{check.expected}")

    def _collect_batches(self, stage: int) -> None:
        own = self.session.devnet.own
        node_ids = {n.local_id for n in own.nodes}
        for batch in self.session.devnet.ledger.batches(stage, participant=own.address):
            self.own_batches_on_chain[batch.batch_id] = len(batch.nonces)
            if batch.node_id not in node_ids:
                self.own_batches_without_node += 1

    async def verdict(self) -> dict[str, Any]:
        daemon = self.session.daemon
        accepted = daemon.metrics.batches_accepted_count()
        # A batch posted after its exchange window closed is refused (410) rather than left to die on
        # chain: a slow ML node's loss, reported, but not a fault of the daemon.
        refused = daemon.metrics.batches_refused_count(late=False)
        late = daemon.metrics.batches_refused_count(late=True)
        assert daemon.outbox is not None
        counts = await daemon.outbox.counts()
        dead = await daemon.outbox.dead_letters()
        landed = len(self.own_batches_on_chain)
        problems = list(self.problems)
        if landed != accepted:
            problems.append(f"{accepted} batches accepted but {landed} on chain")
        if refused:
            problems.append(f"{refused} PoC batches refused by the callback server (see its log)")
        if self.own_batches_without_node:
            problems.append(f"{self.own_batches_without_node} own batches on chain without their ML node id")
        if dead:
            problems.append(f"{len(dead)} transactions dead-lettered: "
                            + "; ".join(f"{d.type_url} code {d.code}: {d.log}" for d in dead[:5]))
        return {
            "healthy": not problems,
            "problems": problems,
            "epochs_formed": self.formed,
            "poc": [c.as_json() for c in self.poc],
            "models": [c.as_json() for c in self.models],
            "batches": {"accepted": accepted, "landed": landed, "refused": refused, "late": late,
                        "without_node_id": self.own_batches_without_node},
            "outbox": counts,
        }
