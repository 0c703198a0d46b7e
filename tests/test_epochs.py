"""Epoch math: stage heights, windows, phases and the effective-epoch context, against the chain's goldens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dapi.chain.epochs import (
    DEVNET_EPOCH_PARAMS,
    BlockWindow,
    EndBlockStage,
    Epoch,
    EpochContext,
    EpochParams,
    Phase,
    UnexpectedHeightError,
    end_block_stages,
)

# Parameter sets of reference/chain-logic.md §2.1 (and chain-io.md §2.4).
DEFAULT = EpochParams()
TEST_OVERRIDES = EpochParams(
    epoch_length=50,
    poc_stage_duration=4,
    poc_exchange_duration=1,
    poc_validation_delay=1,
    poc_validation_duration=4,
    set_new_validators_delay=1,
)
MAINNET = EpochParams(
    epoch_length=17280,
    epoch_shift=16980,
    poc_stage_duration=60,
    poc_exchange_duration=5,
    poc_validation_delay=5,
    poc_validation_duration=20,
    set_new_validators_delay=120,
    inference_validation_cutoff=80,
)
PROD_OVERRIDES = EpochParams(epoch_length=2000, set_new_validators_delay=80)
TESTNET_CLOUD = EpochParams(
    epoch_length=250,
    epoch_shift=230,
    poc_stage_duration=50,
    poc_exchange_duration=5,
    poc_validation_delay=5,
    poc_validation_duration=20,
    set_new_validators_delay=25,
    inference_validation_cutoff=25,
)
PARAMS = {
    "default": DEFAULT,
    "test overrides": TEST_OVERRIDES,
    "mainnet": MAINNET,
    "prod overrides": PROD_OVERRIDES,
    "testnet cloud": TESTNET_CLOUD,
}

# reference/chain-logic.md §2.5 "Golden stage tables", verbatim:
# config | epoch | PoCStart | GenWindDown | PoCEnd | ExchDeadline | ValStart | ValWindDown | ValEnd | SNV | Claim
#        | NextPoC | Cutoff | PoC exch win | Val exch win
STAGE_TABLE = [
    ("default", 1, 40, 48, 50, 52, 52, 56, 58, 59, 60, 80, 80, (41, 52), (53, 58)),
    ("default", 2, 80, 88, 90, 92, 92, 96, 98, 99, 100, 120, 120, (81, 92), (93, 98)),
    ("test overrides", 1, 50, 53, 54, 55, 55, 58, 59, 60, 61, 100, 100, (51, 55), (56, 59)),
    ("mainnet", 1, 300, 348, 360, 365, 365, 381, 385, 505, 506, 17580, 17500, (301, 365), (366, 385)),
    (
        "mainnet",
        2,
        17580,
        17628,
        17640,
        17645,
        17645,
        17661,
        17665,
        17785,
        17786,
        34860,
        34780,
        (17581, 17645),
        (17646, 17665),
    ),
    ("prod overrides", 1, 2000, 2008, 2010, 2012, 2012, 2016, 2018, 2098, 2099, 4000, 4000, (2001, 2012), (2013, 2018)),
    ("testnet cloud", 1, 20, 60, 70, 75, 75, 91, 95, 120, 121, 270, 245, (21, 75), (76, 95)),
]


def epoch_context(params: EpochParams, index: int) -> EpochContext:
    """Epoch `index` anchored where the chain anchors it: each PoC starts at the previous NextPoCStart."""
    ctx = EpochContext.for_epoch(Epoch(0, 0), params)
    for _ in range(index):
        ctx = ctx.next_epoch()
    return ctx


@pytest.mark.parametrize("row", STAGE_TABLE, ids=lambda r: f"{r[0]}-epoch{r[1]}")
def test_stage_heights_match_the_golden_table(row: tuple[Any, ...]) -> None:
    (
        config,
        index,
        poc_start,
        gen_wind_down,
        poc_end,
        exch_deadline,
        val_start,
        val_wind_down,
        val_end,
        snv,
        claim,
        next_poc,
        cutoff,
        poc_window,
        val_window,
    ) = row
    ctx = epoch_context(PARAMS[config], index)
    assert ctx.epoch_index == index
    assert ctx.start_of_poc == poc_start
    assert ctx.poc_generation_wind_down == gen_wind_down
    assert ctx.end_of_poc_generation == poc_end
    assert ctx.poc_exchange_deadline == exch_deadline
    assert ctx.start_of_poc_validation == val_start
    assert ctx.poc_validation_wind_down == val_wind_down
    assert ctx.end_of_poc_validation == val_end
    assert ctx.set_new_validators == snv
    assert ctx.claim_money == claim
    assert ctx.next_poc_start == next_poc
    assert ctx.inference_validation_cutoff == cutoff
    assert ctx.poc_exchange_window == BlockWindow(*poc_window)
    assert ctx.validation_exchange_window == BlockWindow(*val_window)
    stages = ctx.stages()
    assert (
        stages.poc_start,
        stages.poc_generation_end,
        stages.poc_exchange_deadline,
        stages.set_new_validators,
        stages.claim_money,
    ) == (poc_start, poc_end, exch_deadline, snv, claim)


def test_stages_json_has_every_key_of_the_epochs_endpoint() -> None:
    # reference/http.md §1.8: EpochStages keys, all always present.
    body = epoch_context(DEFAULT, 1).stages().as_json()
    assert set(body) == {
        "epoch_index",
        "poc_start",
        "poc_generation_wind_down",
        "poc_generation_end",
        "poc_validation_start",
        "poc_validation_wind_down",
        "poc_validation_end",
        "set_new_validators",
        "claim_money",
        "inference_validation_cutoff",
        "next_poc_start",
        "poc_exchange_window",
        "poc_validation_exchange_window",
    }
    assert body["poc_exchange_window"] == {"start": 41, "end": 52}
    assert body["poc_validation_exchange_window"] == {"start": 53, "end": 58}


def test_genesis_epoch_has_no_stages_but_knows_the_first_poc() -> None:
    ctx = EpochContext.for_epoch(Epoch(0, 0), MAINNET)
    # chain-io.md §2.4: "Mainnet: epoch 0 → first PoC (epoch 1) starts at 17280 - 16980 = 300".
    assert ctx.next_poc_start == 300
    assert ctx.inference_validation_cutoff == 220  # no genesis special case for the cutoff
    assert (
        ctx.start_of_poc,
        ctx.end_of_poc_generation,
        ctx.end_of_poc_validation,
        ctx.set_new_validators,
        ctx.claim_money,
    ) == (0, 0, 0, 0, 0)
    assert ctx.poc_exchange_window == BlockWindow(0, 0)
    assert ctx.validation_exchange_window == BlockWindow(0, 0)
    for h in range(301):
        assert ctx.phase_at(h) is Phase.INFERENCE
        assert not ctx.is_end_of_poc_generation(h)
        assert not ctx.is_end_of_poc_validation(h)
        assert not ctx.is_set_new_validators(h)
        assert not ctx.is_claim_money(h)
        assert not ctx.is_poc_exchange_window(h)
        assert not ctx.is_validation_exchange_window(h)
        assert ctx.is_start_of_poc(h) == (h == 0)
        assert ctx.is_next_poc_start(h) == (h == 300)


# chain-io.md §2.4 "Worked offsets (relative to P)": phase runs over a whole epoch, as (phase, length).
PHASE_RUNS = {
    "default": (
        DEFAULT,
        [
            (Phase.POC_GENERATE, 8),
            (Phase.POC_GENERATE_WIND_DOWN, 4),
            (Phase.POC_VALIDATE, 4),
            (Phase.POC_VALIDATE_WIND_DOWN, 2),
            (Phase.INFERENCE, 22),
        ],
    ),
    "mainnet": (
        MAINNET,
        [
            (Phase.POC_GENERATE, 48),
            (Phase.POC_GENERATE_WIND_DOWN, 17),
            (Phase.POC_VALIDATE, 16),
            (Phase.POC_VALIDATE_WIND_DOWN, 4),
            (Phase.INFERENCE, 17280 - 85),
        ],
    ),
    "testermint": (
        TEST_OVERRIDES,
        [
            (Phase.POC_GENERATE, 3),
            (Phase.POC_GENERATE_WIND_DOWN, 2),
            (Phase.POC_VALIDATE, 3),
            (Phase.POC_VALIDATE_WIND_DOWN, 1),
            (Phase.INFERENCE, 41),
        ],
    ),
    "dapi integration": (
        EpochParams(
            epoch_length=100,
            poc_stage_duration=20,
            poc_exchange_duration=2,
            poc_validation_delay=2,
            poc_validation_duration=10,
            set_new_validators_delay=0,
        ),
        [
            (Phase.POC_GENERATE, 16),
            (Phase.POC_GENERATE_WIND_DOWN, 6),
            (Phase.POC_VALIDATE, 8),
            (Phase.POC_VALIDATE_WIND_DOWN, 2),
            (Phase.INFERENCE, 68),
        ],
    ),
}
# Same table: (end of PoC, PoC window end, validation start, validation end, SNV, claim) relative to P.
BOUNDARY_OFFSETS = {
    "default": (10, 12, 12, 18, 19, 20),
    "mainnet": (60, 65, 65, 85, 205, 206),
    "testermint": (4, 5, 5, 9, 10, 11),
    "dapi integration": (20, 22, 22, 32, 32, 33),
}


@pytest.mark.parametrize("name", list(PHASE_RUNS))
def test_walk_every_height_of_an_epoch_through_the_five_phases(name: str) -> None:
    params, runs = PHASE_RUNS[name]
    end_poc, window_end, val_start, val_end, snv, claim = BOUNDARY_OFFSETS[name]
    ctx = epoch_context(params, 3)
    p = ctx.start_of_poc
    expected = [phase for phase, length in runs for _ in range(length)]
    assert len(expected) == params.epoch_length
    for offset, phase in enumerate(expected):
        h = p + offset
        assert ctx.phase_at(h) is phase, (name, offset)
        assert ctx.is_start_of_poc(h) == (offset == 0)
        assert ctx.is_end_of_poc_generation(h) == (offset == end_poc)
        assert ctx.is_start_of_poc_validation(h) == (offset == val_start)
        assert ctx.is_end_of_poc_validation(h) == (offset == val_end)
        assert ctx.is_set_new_validators(h) == (offset == snv)
        assert ctx.is_claim_money(h) == (offset == claim)
        assert ctx.is_poc_exchange_window(h) == (1 <= offset <= window_end)
        assert ctx.is_validation_exchange_window(h) == (val_start + 1 <= offset <= val_end)
    assert ctx.phase_at(p - 1) is Phase.INFERENCE
    assert ctx.is_next_poc_start(p + params.epoch_length)


def _segments(ctx: EpochContext, height: int) -> tuple[Phase, frozenset[str]]:
    checks: dict[str, Callable[[int], bool]] = {
        "start": ctx.is_start_of_poc,
        "end_poc": ctx.is_end_of_poc_generation,
        "val_start": ctx.is_start_of_poc_validation,
        "val_end": ctx.is_end_of_poc_validation,
        "snv": ctx.is_set_new_validators,
        "claim": ctx.is_claim_money,
        "poc_window": ctx.is_poc_exchange_window,
        "val_window": ctx.is_validation_exchange_window,
    }
    return ctx.phase_at(height), frozenset(k for k, f in checks.items() if f(height))


def _walk_from_effective(params: EpochParams, effective: Epoch, start: int, expected: list[tuple[Any, ...]]) -> None:
    """Walk consecutive heights from `start`: each row is (count, epoch index, phase, true predicates)."""
    h = start
    for count, index, phase, true_checks in expected:
        for _ in range(count):
            ctx = EpochContext.from_effective_epoch(effective, params, h)
            assert ctx.epoch_index == index, h
            assert _segments(ctx, h) == (phase, frozenset(true_checks)), h
            h += 1


def test_walk_from_genesis_like_the_chains_zero_epoch_test() -> None:
    # chain-logic.md §17 / chain-io.md §7.7 TestZeroEpoch: params 100/1/shift 90/P20/X1/D2/V10/S1,
    # effective epoch 0 from h=1, PoC of epoch 1 at 10.
    params = EpochParams(
        epoch_length=100,
        epoch_shift=90,
        poc_stage_duration=20,
        poc_exchange_duration=1,
        poc_validation_delay=2,
        poc_validation_duration=10,
        set_new_validators_delay=1,
    )
    inference, generate, gen_wd = Phase.INFERENCE, Phase.POC_GENERATE, Phase.POC_GENERATE_WIND_DOWN
    validate, val_wd = Phase.POC_VALIDATE, Phase.POC_VALIDATE_WIND_DOWN
    _walk_from_effective(
        params,
        Epoch(0, 0),
        1,
        [
            (9, 0, inference, ()),  # 1..9: genesis, nothing fires
            (1, 1, generate, ("start",)),  # 10: PoC start, not yet in the exchange window
            (15, 1, generate, ("poc_window",)),  # 11..25
            (4, 1, gen_wd, ("poc_window",)),  # 26..29 (wind-down at 10 + trunc(16.0))
            (1, 1, gen_wd, ("end_poc", "poc_window")),  # 30: end of PoC generation
            (1, 1, gen_wd, ("poc_window",)),  # 31: exchange deadline (P + 20 + 1)
            (1, 1, validate, ("val_start",)),  # 32: validation start, in neither window
            (7, 1, validate, ("val_window",)),  # 33..39
            (2, 1, val_wd, ("val_window",)),  # 40..41
            (1, 1, inference, ("val_end", "val_window")),  # 42: end of validation is Inference, still in the window
            (1, 1, inference, ("snv",)),  # 43: set new validators, outside both windows
        ],
    )
    # Without the switch to epoch 1 the next height is unexpected (the chain panics) ...
    with pytest.raises(UnexpectedHeightError):
        EpochContext.from_effective_epoch(Epoch(0, 0), params, 44)
    # ... and after it, SNV + 1 is the claim-money stage.
    assert EpochContext.from_effective_epoch(Epoch(1, 10), params, 44).is_claim_money(44)


def test_walk_across_an_epoch_boundary_like_the_chains_context_test() -> None:
    # chain-io.md §7.7 Test: epoch 5 at 2800, L2000, P60, X1, D2, V20, S1, from 15 blocks before the next PoC.
    params = EpochParams(
        epoch_length=2000,
        poc_stage_duration=60,
        poc_exchange_duration=1,
        poc_validation_delay=2,
        poc_validation_duration=20,
        set_new_validators_delay=1,
    )
    inference, generate, gen_wd = Phase.INFERENCE, Phase.POC_GENERATE, Phase.POC_GENERATE_WIND_DOWN
    validate, val_wd = Phase.POC_VALIDATE, Phase.POC_VALIDATE_WIND_DOWN
    _walk_from_effective(
        params,
        Epoch(5, 2800),
        4785,
        [
            (15, 5, inference, ()),  # 4785..4799: still epoch 5
            (1, 6, generate, ("start",)),  # 4800
            (47, 6, generate, ("poc_window",)),  # 4801..4847
            (12, 6, gen_wd, ("poc_window",)),  # 4848..4859
            (1, 6, gen_wd, ("end_poc", "poc_window")),  # 4860
            (1, 6, gen_wd, ("poc_window",)),  # 4861: exchange deadline
            (1, 6, validate, ("val_start",)),  # 4862
            (15, 6, validate, ("val_window",)),  # 4863..4877
            (4, 6, val_wd, ("val_window",)),  # 4878..4881
            (1, 6, inference, ("val_end", "val_window")),  # 4882
            (1, 6, inference, ("snv",)),  # 4883
        ],
    )
    with pytest.raises(UnexpectedHeightError):
        EpochContext.from_effective_epoch(Epoch(5, 2800), params, 4884)
    assert EpochContext.from_effective_epoch(Epoch(6, 4800), params, 4884).is_claim_money(4884)


def test_validation_window_golden_of_the_prod_bug_test() -> None:
    # chain-io.md §7.7 TestProdBug: params 50/1/0/4/1/1/4/1, epoch 1 at 50 → height 57 is in the validation window.
    ctx = EpochContext.for_epoch(Epoch(1, 50), TEST_OVERRIDES)
    assert ctx.is_validation_exchange_window(57)
    assert not ctx.is_validation_exchange_window(55)  # the validation start block itself is outside
    assert ctx.is_validation_exchange_window(59)  # end of validation is inside


def _end_block_trace(params: EpochParams, last_height: int) -> list[tuple[int, EndBlockStage, int]]:
    """Run the chain's EndBlock stage actions from genesis; return (height, stage, effective index after)."""
    effective = Epoch(0, 0)
    latest = effective
    trace = []
    for h in range(1, last_height + 1):
        at_block_start = effective
        for stage in end_block_stages(at_block_start, params, h):
            if stage is EndBlockStage.SET_NEW_VALIDATORS:
                effective = latest
            elif stage is EndBlockStage.START_OF_POC:
                latest = Epoch(at_block_start.index + 1, h)
            trace.append((h, stage, effective.index))
    return trace


START, FORM, SNV = EndBlockStage.START_OF_POC, EndBlockStage.END_OF_POC_VALIDATION, EndBlockStage.SET_NEW_VALIDATORS


def test_end_block_trace_default_params() -> None:
    # chain-logic.md §2.5 EndBlock trace (default params, genesis effective {0,0}):
    # h=40 StartOfPoC (create epoch 1); h=58 form epoch 1; h=59 effective 0→1; h=80 epoch 2; h=98 form 2;
    # h=99 effective 1→2; h=120 StartOfPoC (epoch 3).
    assert _end_block_trace(DEFAULT, 120) == [
        (40, START, 0),
        (58, FORM, 0),
        (59, SNV, 1),
        (80, START, 1),
        (98, FORM, 1),
        (99, SNV, 2),
        (120, START, 2),
    ]


def test_end_block_trace_test_overrides() -> None:
    # chain-logic.md §2.5: "Test overrides: 50 / 59 / 60, 100 / 109 / 110, 150 / 159 / 160."
    assert [h for h, _, _ in _end_block_trace(TEST_OVERRIDES, 160)] == [50, 59, 60, 100, 109, 110, 150, 159, 160]


def test_end_block_trace_mainnet() -> None:
    # chain-logic.md §2.5: "Mainnet: 300 / 385 / 505, 17580 / 17665 / 17785, 34860 / 34945 / …".
    trace = _end_block_trace(MAINNET, 34945)
    assert trace == [
        (300, START, 0),
        (385, FORM, 0),
        (505, SNV, 1),
        (17580, START, 1),
        (17665, FORM, 1),
        (17785, SNV, 2),
        (34860, START, 2),
        (34945, FORM, 2),
    ]


def test_formation_and_switch_share_a_block_when_the_delay_is_zero() -> None:
    # chain-logic.md §2.5: with set_new_validators_delay = 0 both fire in the same EndBlock, formation first.
    params = EpochParams(set_new_validators_delay=0)
    assert end_block_stages(Epoch(0, 0), params, 58) == (FORM, SNV)
    assert _end_block_trace(params, 80)[:3] == [(40, START, 0), (58, FORM, 0), (58, SNV, 1)]
    assert EpochContext.from_effective_epoch(Epoch(1, 40), params, 59).is_claim_money(59)


def test_wind_downs_truncate_toward_zero() -> None:
    params = EpochParams(poc_stage_duration=7, poc_validation_duration=3, poc_validation_delay=0)
    assert params.poc_generation_wind_down_offset == 5  # 5.6 → 5
    assert params.poc_validation_wind_down_offset == 7 + 2  # 2.4 → 2
    ctx = EpochContext.for_epoch(Epoch(1, 100), params)
    # With no validation delay, the end of PoC is also the validation start (both predicates fire).
    assert ctx.is_end_of_poc_generation(107) and ctx.is_start_of_poc_validation(107)


def test_devnet_params_are_the_design_values() -> None:
    # DESIGN.md §6: epoch_length 40, poc_stage_duration 6, poc_exchange_duration 2, poc_validation_delay 1,
    # poc_validation_duration 4, set_new_validators_delay 2, epoch_shift 0.
    p = DEVNET_EPOCH_PARAMS
    assert (
        p.epoch_length,
        p.poc_stage_duration,
        p.poc_exchange_duration,
        p.poc_validation_delay,
        p.poc_validation_duration,
        p.set_new_validators_delay,
        p.epoch_shift,
    ) == (40, 6, 2, 1, 4, 2, 0)
    p.validate()
    ctx = epoch_context(p, 1)
    assert (ctx.start_of_poc, ctx.end_of_poc_generation, ctx.end_of_poc_validation, ctx.set_new_validators) == (
        40,
        46,
        51,
        53,
    )


def test_default_params_are_the_chain_defaults() -> None:
    # chain-io.md §2.4 DefaultEpochParams().
    assert EpochParams() == EpochParams(
        epoch_length=40,
        epoch_multiplier=1,
        epoch_shift=0,
        default_unit_of_compute_price=100,
        poc_stage_duration=10,
        poc_exchange_duration=2,
        poc_validation_delay=2,
        poc_validation_duration=6,
        set_new_validators_delay=1,
        inference_validation_cutoff=0,
        inference_pruning_epoch_threshold=2,
    )
    for params in PARAMS.values():
        params.validate()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epoch_length", 0),
        ("epoch_multiplier", 0),
        ("poc_stage_duration", 0),
        ("poc_exchange_duration", 0),
        ("poc_validation_duration", 0),
        ("poc_validation_delay", -1),
        ("set_new_validators_delay", -1),
        ("default_unit_of_compute_price", -1),
        ("inference_validation_cutoff", -1),
        ("inference_pruning_epoch_threshold", 0),
    ],
)
def test_invalid_params_are_rejected_naming_the_field(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        EpochParams(**{field: value}).validate()
    # The boundary value one step inside the rule passes.
    EpochParams(**{field: value + 1}).validate()
