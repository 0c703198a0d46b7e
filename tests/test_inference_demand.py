"""Under the demand policy the daemon's local executor draw follows the flags the chain re-chose before PoC.

The chain is stepped block by block around epoch 2's PoC. At every height, once the daemon has processed
it, the participants the daemon as TA may draw for each model are exactly those the chain's own
`GetRandomExecutor` would consider at that height (inference.md §3.1), including after the pre-PoC block
rewrote the effective epoch's POC_SLOT flags.
"""

from __future__ import annotations

from waiting import wait_for

from dapi.chain.epochs import EpochContext
from dapi.devnet.genesis import load_genesis
from dapi.devnet.ledger.executors import ExecutorUnavailable, executor_candidates
from dapi.inference.directory import poc_filter_applies
from dapi.testbed.session import DevnetSession


async def test_the_draw_follows_the_poc_slots_re_chosen_before_the_poc() -> None:
    genesis = load_genesis(None, overrides={"poc_slot_policy": "demand"}, block_time=0.05)
    async with DevnetSession(genesis=genesis, block_time=None) as s:
        devnet = s.devnet
        params = devnet.genesis.epoch_params
        ctx = EpochContext(2, 2 * params.epoch_length - params.epoch_shift, params)
        selection = ctx.start_of_poc - params.pre_poc_selection_offset
        assert params.pre_poc_selection_offset > 0
        devnet.pause_at(selection - 2)
        await wait_for(lambda: devnet.paused, what="the chain paused before the pre-PoC block", timeout=60)
        directory = s.daemon.inference.directory if s.daemon.inference else None
        assert directory is not None
        models = [m.id for m in devnet.genesis.models]
        filtered = 0
        for _ in range(selection - 2, ctx.end_of_poc_generation):
            await devnet.step()
            height = devnet.ledger.height
            await wait_for(lambda h=height: (s.daemon.view.snapshot is not None  # type: ignore[misc]
                                             and s.daemon.view.snapshot.height == h),
                           what=f"the daemon at {height}", timeout=30)
            snapshot = s.daemon.view.snapshot
            assert snapshot is not None
            filtered += poc_filter_applies(snapshot)
            for model in models:
                # The daemon filters from the block before the PoC start (its nodes switch on that block),
                # so there it draws among those the chain will consider once the PoC has started.
                at = height + 1 if height + 1 == ctx.start_of_poc else height
                try:
                    chain = sorted(c.address for c in executor_candidates(devnet.ledger.state, model, at))
                except ExecutorUnavailable:
                    chain = []
                ours = sorted(c.address for c in await directory.candidates(model))
                assert ours == chain, (height, model)
        devnet.resume_blocks()
    assert filtered > 0
    report = devnet.report(1)
    assert report is not None and report.pre_poc_selection_height == selection
