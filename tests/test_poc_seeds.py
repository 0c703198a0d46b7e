"""Seeds: signed, submitted once per epoch, rotated, claimed once, all surviving a restart."""

from __future__ import annotations

from pathlib import Path

from google.protobuf.message import Message

from dapi.chain.keys import SigningKey, verify_signature
from dapi.gen.inference.inference.tx_pb2 import MsgClaimRewards, MsgSubmitSeed
from dapi.poc.seeds import SeedManager
from dapi.poc.validation import sample_indices, sample_seed

KEY = SigningKey.from_hex("a6703374c8c14829bccb1eb13ecdb1ae7703d9e8b3e0a7f44b94bdfcebb0be32")
ACCOUNT = "gonka1account"


class Sink:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def submit(self, msg: Message) -> int:
        self.messages.append(msg)
        return len(self.messages)


async def test_seed_lifecycle_over_two_epochs(tmp_path: Path) -> None:
    sink = Sink()
    seeds = SeedManager(tmp_path / "seeds.json", key=KEY, account_address=ACCOUNT, tx_sink=sink)
    first = await seeds.generate(1)
    assert first is not None and first.epoch_index == 1 and 0 <= first.seed < 2**63
    assert verify_signature(KEY.public_key, first.seed.to_bytes(8, "big"), bytes.fromhex(first.signature))
    assert await seeds.generate(1) == first  # a replayed PoC-start block sends nothing new
    [sent] = sink.messages
    assert isinstance(sent, MsgSubmitSeed)
    assert (sent.creator, sent.epoch_index, sent.signature) == (ACCOUNT, 1, first.signature)

    await seeds.rotate()
    await seeds.rotate()  # replayed: no second rotation
    assert (seeds.upcoming, seeds.current, seeds.previous) == (None, first, None)
    assert not await seeds.claim()  # nothing to claim before a seed becomes previous

    second = await seeds.generate(2)
    await seeds.rotate()
    assert (seeds.current, seeds.previous) == (second, first)
    assert await seeds.claim()
    assert not await seeds.claim()  # once per epoch
    claim = sink.messages[-1]
    assert isinstance(claim, MsgClaimRewards)
    assert (claim.creator, claim.seed, claim.epoch_index) == (ACCOUNT, first.seed, 1)
    assert len(sink.messages) == 3


async def test_seeds_and_claims_survive_a_restart(tmp_path: Path) -> None:
    sink = Sink()
    seeds = SeedManager(tmp_path / "seeds.json", key=KEY, account_address=ACCOUNT, tx_sink=sink)
    first = await seeds.generate(1)
    await seeds.rotate()
    second = await seeds.generate(2)
    await seeds.rotate()
    await seeds.claim()

    again = SeedManager(tmp_path / "seeds.json", key=KEY, account_address=ACCOUNT, tx_sink=sink)
    await again.load()
    assert (again.current, again.previous, again.last_claimed_epoch) == (second, first, 1)
    assert not await again.claim()  # the claim for epoch 1 was already sent before the restart
    assert await again.generate(2) is None  # epoch 2's seed was made and rotated before the restart
    third = await again.generate(3)
    assert third is not None and third.epoch_index == 3 and len(sink.messages) == 4


async def test_read_only_daemon_sends_no_seed(tmp_path: Path) -> None:
    seeds = SeedManager(tmp_path / "seeds.json", key=None, account_address=ACCOUNT, tx_sink=None)
    assert await seeds.generate(1) is None and not await seeds.claim()


def test_sampling_is_deterministic_per_validator_and_stage() -> None:
    seed = sample_seed("02abcdef", "A1B2", 120)
    assert sample_indices(1000, 200, seed) == sample_indices(1000, 200, seed)
    picked = sample_indices(1000, 200, seed)
    assert len(set(picked)) == 200 and all(0 <= i < 1000 for i in picked)
    assert sample_indices(1000, 200, sample_seed("02abcdef", "A1B2", 121)) != picked
    assert sample_indices(1000, 200, sample_seed("03ffffff", "A1B2", 120)) != picked
    assert sample_indices(50, 200, seed) == list(range(50))
