"""Hardware sync: keep the chain's HardwareNodes of this participant equal to the local node list.

reference/broker.md §5.6: read `HardwareNodes(own address)`, diff against the local nodes (status =
current status, models = sorted configured ids, port = the PoC port) and submit one
MsgSubmitHardwareDiff when anything differs. Host and port count in the comparison (fix 9).
"""

from __future__ import annotations

from dapi.broker.chain_reader import ChainReader, TxSink
from dapi.broker.registry import NodeRegistry
from dapi.broker.rules import hardware_diff, to_chain_hardware_node
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitHardwareDiff
from dapi.logs import get_logger

__all__ = ["HardwareSync"]

log = get_logger("dapi.broker.hardware_sync")


class HardwareSync:
    """Keeps the chain's hardware record of this participant equal to the registered nodes.

    It keeps no timer: the broker calls :meth:`sync_once` on its hardware-sync interval.

    Args:
        registry: the registered nodes; their configs and current statuses are the local side of the diff.
        chain: where the participant's ``HardwareNodes`` are read.
        participant: the participant's account address, whose record is compared and who sends the diff.
        tx_sink: where a ``MsgSubmitHardwareDiff`` goes; None (read-only) computes and logs the diff but sends nothing.
    """

    def __init__(self, registry: NodeRegistry, chain: ChainReader, participant: str, tx_sink: TxSink | None) -> None:
        self._registry = registry
        self._chain = chain
        self._participant = participant
        self._tx_sink = tx_sink
        self.diffs_sent = 0

    async def sync_once(self) -> MsgSubmitHardwareDiff | None:
        """Compute the diff and hand it to the tx sink; returns it (None if in sync). Chain errors propagate."""
        on_chain = await self._chain.hardware_nodes(self._participant)
        local = [to_chain_hardware_node(e.node.config, e.state.current_status) for e in self._registry]
        diff = hardware_diff(self._participant, local, on_chain.hardware_nodes)
        if diff is None:
            return None
        if self._tx_sink is None:
            log.info(
                "hardware diff not sent: no signer (read-only)",
                changed=[n.local_id for n in diff.newOrModified],
                removed=[n.local_id for n in diff.removed],
            )
            return diff
        await self._tx_sink.submit(diff)
        self.diffs_sent += 1
        log.info(
            "hardware diff submitted",
            changed=[n.local_id for n in diff.newOrModified],
            removed=[n.local_id for n in diff.removed],
        )
        return diff
