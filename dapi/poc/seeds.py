"""The participant's random seeds: one per epoch, signed, submitted at PoC start, rotated, then claimed.

At the PoC start of epoch N a fresh seed is signed and sent (MsgSubmitSeed) as the *upcoming* seed;
at set-new-validators it becomes *current* and the old current becomes *previous*; at claim-money the
previous seed claims that epoch's rewards (MsgClaimRewards). All three survive restarts in
``data_dir``, and each step is idempotent, so a block replayed after a reconnect or a restart never
sends a second seed or a second claim for the same epoch.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from dapi.chain.keys import SigningKey
from dapi.chain.outbox import TxSink
from dapi.gen.inference.inference.tx_pb2 import MsgClaimRewards, MsgSubmitSeed
from dapi.logs import get_logger
from dapi.runtime.jsonfile import load_json, save_json

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Seed:
    """One epoch's random seed and the participant's signature over it."""

    seed: int  # int64, as MsgClaimRewards carries it
    epoch_index: int
    signature: str  # lowercase hex of the 64-byte signature over the seed's 8 big-endian bytes


def sign_seed(key: SigningKey, seed: int) -> str:
    return key.sign(seed.to_bytes(8, "big", signed=True)).hex()


class ClaimGate(Protocol):
    """Decides when an epoch's claim may go out (the inference validations it needs have landed)."""

    async def may_claim(self, epoch_index: int) -> bool: ...

    async def claim_sent(self, epoch_index: int, outbox_row: int | None) -> None: ...


class SeedManager:
    """The participant's upcoming, current and previous seeds: made at PoC start, rotated, then used to claim.

    Args:
        path: the JSON file the seeds persist in, so a restart neither sends a seed twice nor forgets one.
        key: the signer key that signs each seed; None (read-only) makes no seeds.
        account_address: the participant's account, the creator of MsgSubmitSeed and MsgClaimRewards.
        tx_sink: where those messages go (the outbox); None sends nothing.
    """

    def __init__(self, path: Path, *, key: SigningKey | None, account_address: str, tx_sink: TxSink | None) -> None:
        self.path = path
        self._key = key
        self._account = account_address
        self._tx = tx_sink
        self.upcoming: Seed | None = None
        self.current: Seed | None = None
        self.previous: Seed | None = None
        self.last_claimed_epoch: int | None = None
        self.seeds_sent = 0
        self.claims_sent = 0
        # Set by the daemon when it validates inferences: the claim then waits for the epoch's validations.
        self.gate: ClaimGate | None = None
        self._claiming = asyncio.Lock()  # the block dispatcher and the gate both ask for the claim

    async def load(self) -> None:
        doc = await load_json(self.path)
        if not isinstance(doc, dict):
            return

        def seed(name: str) -> Seed | None:
            value = doc.get(name)
            if not isinstance(value, dict):
                return None
            try:
                return Seed(seed=int(value["seed"]), epoch_index=int(value["epoch_index"]),
                            signature=str(value["signature"]))
            except (KeyError, TypeError, ValueError):
                log.error("a stored seed is unreadable; ignored", path=str(self.path), which=name)
                return None

        self.upcoming, self.current, self.previous = seed("upcoming"), seed("current"), seed("previous")
        self.last_claimed_epoch = doc.get("last_claimed_epoch")

    async def _save(self) -> None:
        def dump(s: Seed | None) -> dict[str, Any] | None:
            return asdict(s) if s else None

        await save_json(self.path, {
            "upcoming": dump(self.upcoming), "current": dump(self.current), "previous": dump(self.previous),
            "last_claimed_epoch": self.last_claimed_epoch,
        })

    async def generate(self, epoch_index: int) -> Seed | None:
        """At PoC start of ``epoch_index``: a new signed seed, persisted before it is submitted."""
        if self._key is None or self._tx is None:
            log.warning("no signer key: no seed submitted", epoch=epoch_index)
            return None
        if self.upcoming is not None and self.upcoming.epoch_index == epoch_index:
            return self.upcoming  # already generated and handed to the outbox for this epoch
        if any(s is not None and s.epoch_index >= epoch_index for s in (self.current, self.previous)):
            return None  # that epoch's seed was made and rotated long ago
        value = secrets.randbits(63)
        seed = Seed(seed=value, epoch_index=epoch_index, signature=sign_seed(self._key, value))
        # Outbox first, file second: a crash in between re-signs a new seed on replay (the chain keeps
        # the last one, which is the one saved); the other order could lose the submission.
        await self._tx.submit(MsgSubmitSeed(creator=self._account, epoch_index=epoch_index,
                                            signature=seed.signature))
        self.upcoming = seed
        await self._save()
        self.seeds_sent += 1
        log.info("seed submitted", epoch=epoch_index)
        return self.upcoming

    async def rotate(self) -> None:
        """At set-new-validators: upcoming → current → previous."""
        if self.upcoming is None:
            return  # nothing new since the last rotation (a replayed block, or no seed this epoch)
        self.previous, self.current, self.upcoming = self.current, self.upcoming, None
        await self._save()
        log.info("seeds rotated", current_epoch=self.current.epoch_index if self.current else None)

    def seed_for(self, epoch_index: int) -> Seed | None:
        """The seed made for ``epoch_index`` (the one its claim will carry), if this node still holds it."""
        return next((s for s in (self.current, self.previous, self.upcoming)
                     if s is not None and s.epoch_index == epoch_index), None)

    @property
    def claim_pending(self) -> int | None:
        """The epoch whose claim is due and not yet sent (previous seed, not claimed), if any."""
        if self._tx is None or self.previous is None:
            return None
        if self.last_claimed_epoch is not None and self.previous.epoch_index <= self.last_claimed_epoch:
            return None
        return self.previous.epoch_index

    async def claim(self) -> bool:
        """At claim-money (and again whenever the gate asks): claim the epoch whose seed is now previous, once.

        With a gate, the claim waits until the gate allows it; the gate calls this again when it does.
        """
        async with self._claiming:
            epoch = self.claim_pending
            if epoch is None or self.previous is None or self._tx is None:
                return False
            if self.gate is not None and not await self.gate.may_claim(epoch):
                return False
            row = await self._tx.submit(MsgClaimRewards(creator=self._account, seed=self.previous.seed,
                                                        epoch_index=epoch))
            self.last_claimed_epoch = epoch
            await self._save()
            self.claims_sent += 1
            if self.gate is not None:
                await self.gate.claim_sent(epoch, row)
            log.info("rewards claimed", epoch=epoch)
            return True
