"""The EndBlock stages of reference/chain-logic.md §10, over the inference module's state.

`end_block(state, height)` first expires the started inferences whose timeout is `height`
(reference/inference.md §2.6), then runs the stages due at `height`, each against the epoch that was
effective at the start of the block, through the pure schedule logic of `dapi.devnet.schedule`:

- start of PoC (h = next PoC start): create Epoch{effective + 1, h} and its empty parent group, and
  prune the PoC data that formation no longer needs;
- end of PoC validation: settle the ending epoch (coverage bonus, and the work coins executors earned,
  whose epoch stats then start again), then form the upcoming one from the
  stage's batches and validations, the effective epoch's validators and allocations, seeds, hardware
  declarations and the governance registry (weights → assignment → 50% rule → groups with snapshots),
  and write its epoch report;
- set new validators: the upcoming epoch becomes effective;
- pre-PoC block (`pre_poc_selection_offset` blocks before the next PoC; DESIGN.md §6.1): measure each
  model's demand over the Inference phase that is ending (SetRealThroughput), under `poc_slot_policy:
  demand` re-select the effective epoch's POC_SLOT flags from it, and report (event and epoch report)
  every model whose demand exceeds what keeps serving during the PoC (ValidateThroughputPerformance).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from dapi.chain.epochs import EndBlockStage, Epoch, EpochContext, end_block_stages
from dapi.devnet.ledger.inference_msgs import expire_inferences
from dapi.devnet.ledger.inferences import EpochStats, ParticipantStatus
from dapi.devnet.ledger.records import EpochReport, MemberReport, NodeReport, TxEvent
from dapi.devnet.ledger.state import InferenceState
from dapi.devnet.schedule.assignment import PocSlotPolicy
from dapi.devnet.schedule.formation import FormationInput, form_epoch
from dapi.devnet.schedule.records import ActiveParticipant, EpochGroupData
from dapi.devnet.schedule.selection import select_poc_slots
from dapi.devnet.schedule.settlement import fixed_epoch_reward, settle_epoch_rewards
from dapi.devnet.schedule.throughput import (
    set_expected_throughput,
    set_real_throughput,
    validate_throughput_performance,
)
from dapi.logs import get_logger

__all__ = ["end_block"]

log = get_logger(__name__)


def end_block(state: InferenceState, height: int) -> tuple[EndBlockStage, ...]:
    """Run the stages due at `height`; returns the stage actions that ran."""
    effective = state.effective_epoch()  # as at the start of the block, for every stage (chain-logic §10)
    state.end_block_events.clear()
    expired = expire_inferences(state, height)
    if expired:
        log.info("devnet: inferences expired", height=height, count=len(expired))
    stages = end_block_stages(effective, state.params, height)
    for stage in stages:
        if stage is EndBlockStage.END_OF_POC_VALIDATION:
            end_of_poc_validation(state, effective, height)
        elif stage is EndBlockStage.SET_NEW_VALIDATORS:
            set_new_validators(state, effective, height)
        elif stage is EndBlockStage.START_OF_POC:
            start_of_poc(state, effective, height)
        elif stage is EndBlockStage.PRE_POC_SELECTION:
            pre_poc_selection(state, effective, height)
    return stages


def start_of_poc(state: InferenceState, effective: Epoch, height: int) -> None:
    index = effective.index + 1
    state.epochs[index] = Epoch(index, height)
    state.set_latest_epoch(index, height)
    state.groups.set((index, ""), EpochGroupData(
        poc_start_block_height=height, epoch_index=index, epoch_group_id=next(state.group_ids)
    ), height)
    prune_poc_data(state, index)
    log.info("devnet: PoC started", epoch=index, height=height)


def prune_poc_data(state: InferenceState, upcoming: int) -> None:
    # As the chain, after the previous formation consumed the data; the threshold is a genesis param.
    threshold = state.genesis.poc_params.poc_data_pruning_epoch_threshold
    stale = {e.poc_start_block_height for i, e in state.epochs.items() if i >= 1 and upcoming - i >= threshold}
    for store in (state.batches, state.validations):
        for key in [k for k in store if k[0] in stale]:
            del store[key]
    for index in [i for i in state.formation_inputs if upcoming - i >= threshold]:
        del state.formation_inputs[index]


def end_of_poc_validation(state: InferenceState, effective: Epoch, height: int) -> None:
    if effective.index > 0:
        settle(state, effective.index, height)
    index = effective.index + 1
    upcoming = state.epochs.get(index)
    if upcoming is None:
        return
    current = state.groups.get((effective.index, ""))
    assert current is not None, "the effective epoch always has a parent group"
    stage = upcoming.poc_start_block_height
    inp = FormationInput(
        epoch_index=index,
        poc_start_block_height=stage,
        registry=state.registry,
        participants=dict(state.participants),
        hardware=dict(state.hardware),
        batches=state.batches_of(stage),
        validations=state.validations_of(stage),
        validator_weights={vw.member_address: vw.weight for vw in current.validation_weights},
        seeds={s.participant: s for s in state.seeds_of(index)},
        previous=state.active.get(effective.index, ()),
        default_unit_of_compute_price=(
            current.unit_of_compute_price if index > 1 else state.params.default_unit_of_compute_price
        ),
        poc_slot_policy=state.genesis.poc_slot_policy,
    )
    formed = form_epoch(inp)
    state.formation_inputs[index] = inp
    state.active[index] = formed.active_participants
    existing = state.groups.get((index, ""))
    group_id = existing.epoch_group_id if existing is not None else next(state.group_ids)
    # As the real chain: the formed epoch carries no price; set-new-validators writes it into the parent
    # group (module.go, moveUpcomingToEffectiveGroup), so an API node must read it again then.
    state.pending_prices[index] = formed.parent.unit_of_compute_price
    parent = replace(formed.parent, epoch_group_id=group_id, unit_of_compute_price=0)
    state.groups.set((index, ""), parent, height)
    for sub in formed.sub_groups:
        state.groups.set((index, sub.model_id), replace(
            sub, epoch_group_id=next(state.group_ids), unit_of_compute_price=0
        ), height)
    state.reports[index] = build_report(state, index, stage, height, parent, formed.active_participants)
    log.info("devnet: epoch formed", epoch=index, height=height, members=len(formed.active_participants),
             models=list(parent.sub_group_models))


def set_new_validators(state: InferenceState, effective: Epoch, height: int) -> None:
    index = effective.index + 1
    new_parent = state.groups.get((index, ""))
    old_parent = state.groups.get((effective.index, ""))
    price = state.pending_prices.pop(index, old_parent.unit_of_compute_price if old_parent else 0)
    if new_parent is not None and old_parent is not None:
        state.groups.set((index, ""), replace(
            new_parent, effective_block_height=height, previous_epoch_requests=old_parent.number_of_requests,
            unit_of_compute_price=price,
        ), height)
        state.groups.set((effective.index, ""), replace(old_parent, last_block_height=height - 1), height)
    state.set_effective_epoch(index, height)
    report = state.reports.get(index)
    if report is not None:
        state.reports[index] = replace(report, effective_at_height=height, unit_of_compute_price=price)
    log.info("devnet: new epoch effective", epoch=index, height=height)


def pre_poc_selection(state: InferenceState, effective: Epoch, height: int) -> None:
    """The pre-PoC block of the effective epoch: measure demand, re-select under `demand`, report shortfalls.

    The selection rewrites the effective epoch's active participants and sub-groups, so everything that
    reads the flags during the coming PoC follows it: the executor draw, the validation skip, the peers'
    mining, API nodes (they re-read at this height) and preservation at the next formation.
    """
    index = effective.index
    parent = state.groups.get((index, ""))
    if index == 0 or parent is None or not parent.sub_group_models:
        return
    # The Inference phase begins at the end of PoC validation (the model-loading blocks included).
    since = EpochContext.for_epoch(effective, state.params).end_of_poc_validation
    parent = set_real_throughput(parent, state.completed_inferences(), since, height)
    if state.genesis.poc_slot_policy is PocSlotPolicy.DEMAND:
        real = dict(zip(parent.sub_group_models, parent.real_throughput_vector, strict=True))
        active = select_poc_slots(state.active.get(index, ()), real, epoch_index=index,
                                  params=state.genesis.pre_poc_selection)
        state.active[index] = active
        by_address = {p.index: p for p in active}
        for model_id in parent.sub_group_models:
            sub = state.groups.get((index, model_id))
            if sub is None:
                continue
            weights = tuple(
                replace(vw, ml_nodes=by_address[vw.member_address].nodes_for_model(model_id))
                if vw.member_address in by_address else vw
                for vw in sub.validation_weights
            )
            state.groups.set((index, model_id), replace(sub, validation_weights=weights), height)
        parent = set_expected_throughput(parent, active)
    state.groups.set((index, ""), parent, height)
    shortfalls = validate_throughput_performance(parent)
    for s in shortfalls:
        state.end_block_events.append(TxEvent("throughput_shortfall", (
            ("epoch_index", str(index)), ("model_id", s.model_id), ("demand", str(s.demand)),
            ("capacity", str(s.capacity)),
        )))
    report = state.reports.get(index)
    if report is not None:
        settled = {m.address: m for m in report.members}
        members = tuple(
            replace(m, reward=settled[m.address].reward, full_coverage=settled[m.address].full_coverage)
            if m.address in settled else m
            for m in member_reports(state, state.active.get(index, ()))
        )
        state.reports[index] = replace(
            report, members=members,
            expected_throughput_vector=parent.expected_throughput_vector,
            real_throughput_vector=parent.real_throughput_vector,
            throughput_shortfalls=shortfalls, pre_poc_selection_height=height,
        )
    log.info("devnet: pre-PoC block", epoch=index, height=height, policy=str(state.genesis.poc_slot_policy),
             real=list(parent.real_throughput_vector), expected=list(parent.expected_throughput_vector),
             shortfalls=[s.model_id for s in shortfalls])


def settle(state: InferenceState, epoch_index: int, height: int) -> None:
    """Settle an ending epoch's rewards (once) and write them into its report."""
    groups = state.epoch_groups(epoch_index)
    if groups is None or epoch_index in state.rewards:
        return
    parent, subs = groups
    rewards = state.genesis.rewards
    amount = fixed_epoch_reward(rewards.initial_epoch_reward, rewards.decay_rate,
                                epoch_index - rewards.genesis_epoch)
    shares = settle_epoch_rewards(parent, subs, amount)
    state.rewards[epoch_index] = {s.participant: s for s in shares}
    settle_work(state, epoch_index)
    report = state.reports.get(epoch_index)
    if report is not None:
        by_address = state.rewards[epoch_index]
        members = tuple(
            replace(m, reward=by_address[m.address].amount, full_coverage=by_address[m.address].full_coverage)
            if m.address in by_address else m
            for m in report.members
        )
        state.reports[epoch_index] = replace(report, members=members, epoch_reward=amount,
                                             settled_at_height=height)


def settle_work(state: InferenceState, epoch_index: int) -> None:
    """What executors earned becomes claimable for the settled epoch; coin balances and epoch stats restart.

    An INVALID participant's positive balance is not paid (as the chain's settlement); a negative one
    (invalidated work already settled) is carried over.
    """
    settled: dict[str, int] = {}
    for address, work in state.work.items():
        coins = work.coin_balance
        if coins > 0 and work.status is not ParticipantStatus.INVALID:
            settled[address] = coins
        state.work[address] = replace(work, coin_balance=min(coins, 0), current_epoch_stats=EpochStats(),
                                      epochs_completed=work.epochs_completed + 1)
    state.settled_work[epoch_index] = settled


def build_report(
    state: InferenceState,
    index: int,
    stage: int,
    height: int,
    parent: EpochGroupData,
    active: Iterable[ActiveParticipant],
) -> EpochReport:
    """The report of a just-formed epoch: members, their weights and models, each node's allocation."""
    return EpochReport(
        epoch_index=index,
        poc_start_block_height=stage,
        formed_at_height=height,
        effective_at_height=None,
        total_weight=parent.total_weight,
        sub_group_models=parent.sub_group_models,
        unit_of_compute_price=parent.unit_of_compute_price,
        members=member_reports(state, active),
        poc_slot_policy=str(state.genesis.poc_slot_policy),
        expected_throughput_vector=parent.expected_throughput_vector,
    )


def member_reports(state: InferenceState, active: Iterable[ActiveParticipant]) -> tuple[MemberReport, ...]:
    """Each member's weight, models and nodes with their allocation, as the report shows them."""
    members = []
    for p in active:
        nodes: list[NodeReport] = []
        for position, group in enumerate(p.ml_nodes):
            model_id = p.models[position] if position < len(p.models) else ""
            nodes.extend(
                NodeReport(node_id=n.node_id, model_id=model_id, poc_weight=n.poc_weight,
                           poc_slot=n.is_active_during_poc, throughput=n.throughput)
                for n in group.ml_nodes
            )
        members.append(MemberReport(address=p.index, name=state.names.get(p.index, ""), weight=p.weight,
                                    models=p.models, nodes=tuple(nodes)))
    return tuple(members)
