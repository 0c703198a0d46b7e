"""Simulated peers: the other participants of the devnet, acting like correct API nodes.

Each peer signs real txs with its signer key (authz MsgExec on behalf of its account) and submits
them through the ledger's CheckTx, so the peers exercise the same rules as the daemon's txs. After each
committed block (`on_block`), a peer:

- declares its ML nodes once (MsgSubmitHardwareDiff);
- at the PoC start of the upcoming epoch: submits its seed (MsgSubmitSeed) and one PoC batch per
  mining ML node, with node_id; a node that has POC_SLOT=true in the effective epoch keeps serving
  inference and does not mine ("last epoch's POC_SLOT governs the current PoC");
- during the validation stage: validates every participant's batches of that stage, the own
  participant's included, by recomputing the simulated distances exactly as a sim ML node does
  (`dapi.devnet.mlnode.sim_dist`), and votes (MsgSubmitPocValidation); a participant whose batches
  change later is validated again (the chain keeps the last vote);
- at claim-money: claims the rewards of the epoch that just ended (MsgClaimRewards with its seed).

Nonces are real simulated PoW: the distance of nonce n is sim_dist(hex account pubkey, hash of the
PoC start block, PoC start height, n), and a node keeps the nonces below r_target, as a sim ML node
does. So the daemon's validation of peers (through its sim ML nodes) and the peers' validation of the
daemon agree, and a forged batch is caught by both.

`set_misbehaviour` makes one peer break the rules so tests can show the chain's rules bite: mining
with its POC_SLOT nodes too (preservation ignores those batches), skipping its seed (it is not formed),
or forging distances (validators detect fraud). Serving inferences and validating them is done by
`dapi.devnet.executor` and `dapi.devnet.validators`, which read `wrong_inference_output` from here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from google.protobuf.message import Message

from dapi.chain.epochs import EpochContext
from dapi.chain.tx import TxSigner
from dapi.devnet.genesis import DevnetGenesis, ParticipantSpec
from dapi.devnet.ledger import Block, CheckTxResult, Ledger, TxRecord
from dapi.devnet.mlnode.pocmath import sim_dist, validate_proof_batch
from dapi.devnet.schedule.records import HardwareNode, HardwareNodeStatus, PoCBatch
from dapi.devnet.wire.convert import hardware_node_to_proto
from dapi.gen.inference.inference import tx_pb2 as itx
from dapi.logs import get_logger
from dapi.mlnodeclient.models import ProofBatch

__all__ = ["MISBEHAVIOUR_KINDS", "Misbehaviour", "PeerSimulator", "PeerTx", "parse_misbehave"]

log = get_logger(__name__)

# How far apart the nonce budgets of a peer's nodes are, so node weights differ and the 50% rule has
# something to choose between.
_NONCE_SPREAD = 16


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """How one simulated peer breaks the rules: mining with its POC_SLOT nodes, skipping its seed, forging distances,
    or answering inferences with output its model would not produce (its sim ML nodes serve a wrong model)."""

    mine_with_poc_slot_nodes: bool = False
    skip_seed: bool = False
    forge_batches: bool = False
    wrong_inference_output: bool = False

    @classmethod
    def of_kinds(cls, kinds: Iterable[str]) -> Misbehaviour:
        """From the command line's kind names (`mine-with-poc-slot`, `skip-seed`, `forge-batches`,
        `wrong-inference-output`)."""
        fields: dict[str, bool] = {}
        for kind in kinds:
            field_name = MISBEHAVIOUR_KINDS.get(kind)
            if field_name is None:
                raise ValueError(f"unknown misbehaviour {kind!r} (known: {', '.join(MISBEHAVIOUR_KINDS)})")
            fields[field_name] = True
        return cls(**fields)


# Command-line name of each misbehaviour -> the Misbehaviour field it sets.
MISBEHAVIOUR_KINDS = {
    "mine-with-poc-slot": "mine_with_poc_slot_nodes",
    "skip-seed": "skip_seed",
    "forge-batches": "forge_batches",
    "wrong-inference-output": "wrong_inference_output",
}


def parse_misbehave(spec: str, peer_names: Iterable[str]) -> tuple[str, Misbehaviour]:
    """`PEER=KIND[,KIND...]` (as `dapi devnet --misbehave` takes it) -> (peer name, Misbehaviour)."""
    peer, sep, kinds = spec.partition("=")
    names = list(peer_names)
    if not sep or not peer or not kinds:
        raise ValueError(f"--misbehave {spec!r}: expected PEER=KIND[,KIND...]")
    if peer not in names:
        raise ValueError(f"--misbehave {spec!r}: no peer {peer!r} (peers: {', '.join(names)})")
    return peer, Misbehaviour.of_kinds(k.strip() for k in kinds.split(","))


@dataclass(frozen=True, slots=True)
class PeerTx:
    """A tx a peer submitted: what it was, and how CheckTx answered."""

    peer: str
    kind: str
    check: CheckTxResult
    height: int  # the block after which it was submitted


@dataclass(eq=False)
class _Peer:
    spec: ParticipantSpec
    signer: TxSigner
    misbehaviour: Misbehaviour = field(default_factory=Misbehaviour)
    hardware_sent: bool = False
    seeds: dict[int, int] = field(default_factory=dict)  # epoch index -> seed value
    votes: dict[tuple[int, str], tuple[tuple[str, int], ...]] = field(default_factory=dict)
    claimed: set[int] = field(default_factory=set)


class PeerSimulator:
    """All simulated peers of one devnet chain; the runner calls `on_block` after every block.

    Args:
        chain: the devnet chain the peers send their txs to and read their epochs from.
        genesis: its `peers` are the participants simulated here, with their keys and ML nodes.
    """

    def __init__(self, ledger: Ledger, genesis: DevnetGenesis) -> None:
        self.ledger = ledger
        self.genesis = genesis
        self._peers: dict[str, _Peer] = {}
        for spec in genesis.peers:
            account = ledger.account(spec.signer_address)
            assert account is not None, "genesis creates an account for every signer key"
            signer = TxSigner(spec.signer_key, chain_id=ledger.chain_id, account_number=account.account_number,
                              account_address=spec.address, clock_ns=ledger.now_ns)
            self._peers[spec.name] = _Peer(spec=spec, signer=signer)
        self.txs: list[PeerTx] = []

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._peers)

    def set_misbehaviour(self, peer: str, misbehaviour: Misbehaviour) -> None:
        self._peers[peer].misbehaviour = misbehaviour

    def misbehaviour(self, peer: str) -> Misbehaviour:
        return self._peers[peer].misbehaviour

    def rejected(self) -> list[PeerTx]:
        """Peer txs that CheckTx refused (a correct peer has none)."""
        return [t for t in self.txs if not t.check.ok]

    def failed(self) -> list[tuple[PeerTx, TxRecord]]:
        """Peer txs included with a non-zero result code (a correct peer has none)."""
        out = []
        for t in self.txs:
            record = self.ledger.tx(t.check.hash) if t.check.ok else None
            if record is not None and not record.ok:
                out.append((t, record))
        return out

    # --- the block hook ---

    def on_block(self, block: Block) -> None:
        height = block.height
        params = self.ledger.params
        latest = self.ledger.latest_epoch()
        effective = self.ledger.effective_epoch()
        for peer in self._peers.values():
            if not peer.hardware_sent:
                self._declare_hardware(peer, height)
        if latest.index > effective.index:  # the upcoming epoch's PoC is under way
            ctx = EpochContext.for_epoch(latest, params)
            if height == ctx.start_of_poc:
                for peer in self._peers.values():
                    self._start_poc(peer, ctx, block)
            # Votes land in the next block, which must still be inside the validation window.
            if ctx.start_of_poc_validation <= height < ctx.end_of_poc_validation:
                for peer in self._peers.values():
                    self._validate(peer, ctx, height)
        current = EpochContext.for_epoch(effective, params)
        if effective.index >= 2 and height == current.claim_money:
            for peer in self._peers.values():
                self._claim(peer, effective.index - 1, height)

    # --- actions ---

    def submit(self, peer: str, kind: str, message: Message) -> CheckTxResult:
        """Sign `message` as the peer (its signer key, authz) and pass it through CheckTx, now."""
        return self._submit(self._peers[peer], kind, message, self.ledger.height)

    def _submit(self, peer: _Peer, kind: str, message: Message, height: int) -> CheckTxResult:
        signed = peer.signer.sign([message])
        result = self.ledger.check_tx(signed.raw, external=False)
        self.txs.append(PeerTx(peer=peer.spec.name, kind=kind, check=result, height=height))
        if not result.ok:
            log.warning("devnet peer tx rejected", peer=peer.spec.name, kind=kind, code=result.code, log=result.log)
        return result

    def _declare_hardware(self, peer: _Peer, height: int) -> None:
        nodes = [
            hardware_node_to_proto(HardwareNode(
                local_id=node.local_id,
                status=HardwareNodeStatus.INFERENCE,
                models=node.models,
                hardware=node.hardware,
                host=f"{peer.spec.name}.devnet.invalid",
                port="8080",
            ))
            for node in peer.spec.nodes
        ]
        self._submit(peer, "hardware_diff", itx.MsgSubmitHardwareDiff(creator=peer.spec.address, newOrModified=nodes),
                     height)
        peer.hardware_sent = True

    def seed(self, peer: str, epoch_index: int) -> int | None:
        """The seed the peer submitted for the epoch (None if it has not)."""
        return self._peers[peer].seeds.get(epoch_index)

    def seed_value(self, peer: str, epoch_index: int) -> int:
        digest = hashlib.sha256(f"{self.genesis.chain_id}/{peer}/seed/{epoch_index}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def _start_poc(self, peer: _Peer, ctx: EpochContext, block: Block) -> None:
        epoch_index = ctx.epoch_index
        if not peer.misbehaviour.skip_seed:
            seed = self.seed_value(peer.spec.name, epoch_index)
            signature = peer.spec.signer_key.sign(seed.to_bytes(8, "big", signed=True)).hex()
            result = self._submit(peer, "seed", itx.MsgSubmitSeed(creator=peer.spec.address, epoch_index=epoch_index,
                                                                  signature=signature), block.height)
            if result.ok:
                peer.seeds[epoch_index] = seed
        serving = self.serving_nodes(peer.spec.name)
        node_count = len(peer.spec.nodes) + 1  # as the daemon: highest node number + 1 (DESIGN.md §4.5)
        for number, node in enumerate(peer.spec.nodes, start=1):
            attempts = self.genesis.peer_behaviour.nonces_per_node + _NONCE_SPREAD * ((number - 1) % 3)
            if node.local_id in serving:
                if not peer.misbehaviour.mine_with_poc_slot_nodes:
                    continue
                # A cheat mines hard with its serving nodes, so that ignoring these batches visibly keeps
                # the preserved weight rather than a mined one that might match it by chance.
                attempts *= 2
            nonces, dists = self._mine(peer, block, number, node_count, attempts)
            if not nonces:
                continue
            message = itx.MsgSubmitPocBatch(
                creator=peer.spec.address,
                poc_stage_start_block_height=ctx.start_of_poc,
                batch_id=f"{peer.spec.name}-{ctx.start_of_poc}-{node.local_id}",
                nonces=nonces,
                dist=dists,
                node_id=node.local_id,
            )
            self._submit(peer, "poc_batch", message, block.height)

    def serving_nodes(self, peer: str) -> set[str]:
        """The peer's nodes with POC_SLOT=true in the effective epoch: they serve instead of mining."""
        address = self._peers[peer].spec.address
        effective = self.ledger.effective_epoch().index
        for participant in self.ledger.active_participants(effective):
            if participant.index == address:
                return {n.node_id for n in participant.all_nodes if n.is_active_during_poc}
        return set()

    def _mine(self, peer: _Peer, block: Block, number: int, node_count: int,
              attempts: int) -> tuple[list[int], list[float]]:
        r_target = self.genesis.peer_behaviour.r_target
        nonces: list[int] = []
        dists: list[float] = []
        for k in range(attempts):
            nonce = number + k * node_count  # the node's own nonce space
            distance = sim_dist(peer.spec.hex_pub_key, block.hash, block.height, nonce)
            if distance < r_target:
                nonces.append(nonce)
                dists.append(distance)
            elif peer.misbehaviour.forge_batches:
                nonces.append(nonce)
                dists.append(r_target / 2)  # claims a distance it did not find
        return nonces, dists

    def _validate(self, peer: _Peer, ctx: EpochContext, height: int) -> None:
        stage = ctx.start_of_poc
        start_block = self.ledger.block(stage)
        if start_block is None:
            return
        by_participant: dict[str, list[PoCBatch]] = {}
        for batch in self.ledger.batches(stage):
            by_participant.setdefault(batch.participant_address, []).append(batch)
        behaviour = self.genesis.peer_behaviour
        for participant, batches in sorted(by_participant.items()):
            fingerprint = tuple(sorted((b.batch_id, len(b.nonces)) for b in batches))
            if peer.votes.get((stage, participant)) == fingerprint:
                continue
            account = self.ledger.account(participant)
            if account is None:
                continue
            proof = ProofBatch(
                public_key=account.public_key.hex(),
                block_hash=start_block.hash,
                block_height=stage,
                nonces=[n for b in batches for n in b.nonces],
                dist=[d for b in batches for d in b.dist],
            )
            verdict = validate_proof_batch(proof, r_target=behaviour.r_target,
                                           fraud_threshold=behaviour.fraud_threshold)
            message = itx.MsgSubmitPocValidation(
                creator=peer.spec.address,
                participant_address=participant,
                poc_stage_start_block_height=stage,
                r_target=verdict.r_target,
                fraud_threshold=verdict.fraud_threshold,
                n_invalid=verdict.n_invalid,
                probability_honest=verdict.probability_honest,
                fraud_detected=verdict.fraud_detected,
            )
            if self._submit(peer, "poc_validation", message, height).ok:
                peer.votes[(stage, participant)] = fingerprint

    def _claim(self, peer: _Peer, epoch_index: int, height: int) -> None:
        seed = peer.seeds.get(epoch_index)
        if seed is None or epoch_index in peer.claimed:
            return  # no seed, nothing to claim with (the chain would refuse it)
        result = self._submit(peer, "claim_rewards", itx.MsgClaimRewards(creator=peer.spec.address, seed=seed,
                                                                          epoch_index=epoch_index), height)
        if result.ok:
            peer.claimed.add(epoch_index)

