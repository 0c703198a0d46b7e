"""During PoC generation the daemon as TA keeps serving, and only POC_SLOT nodes do the work.

The chain is held inside epoch 2's PoC generation; requests sent through the daemon as Transfer Agent
are all answered, and every chat call that reached a simulated ML node (the daemon's own or a peer's)
reached one marked POC_SLOT for that PoC in epoch 1's allocation; the mining nodes got none.
"""

from __future__ import annotations

import json
import time

import httpx
from waiting import wait_for

from dapi.chain.epochs import EpochContext
from dapi.devnet.mlnode import SimMLNodeServer
from dapi.inference.signatures import ClientScheme, dev_signed_bytes, sign
from dapi.testbed.session import DevnetSession

REQUESTS = 12


def _chat_calls(server: SimMLNodeServer, name: str, since: float) -> int:
    return sum(1 for c in server.calls(name) if c.path == "/v1/chat/completions" and c.time >= since)


async def test_during_poc_generation_only_poc_slot_nodes_serve() -> None:
    async with DevnetSession(participants=3, nodes_per_participant=4, block_time=0.05) as s:
        devnet = s.devnet
        params = devnet.genesis.epoch_params
        ctx = EpochContext(2, 2 * params.epoch_length - params.epoch_shift, params)
        devnet.pause_at(ctx.start_of_poc + 2)
        await wait_for(lambda: devnet.paused, what="the chain held in PoC generation", timeout=120)
        assert ctx.start_of_poc <= devnet.ledger.height < ctx.end_of_poc_generation
        report = devnet.report(1)
        assert report is not None
        serving = {(m.address, n.node_id) for m in report.members for n in m.nodes if n.poc_slot}
        mining = {(m.address, n.node_id) for m in report.members for n in m.nodes if not n.poc_slot}
        assert serving and mining
        own = devnet.own.address

        def own_switched() -> bool:
            view = s.daemon.view.snapshot
            states = {n.local_id: devnet.mlnodes.node(n.local_id).state.value for n in devnet.own.nodes}
            return (view is not None and view.height >= ctx.start_of_poc + 2
                    and all((states[i] == "INFERENCE") == ((own, i) in serving) for i in states))

        await wait_for(own_switched, what="the own nodes mining or serving as allocated", timeout=30)
        since = time.monotonic()
        client = devnet.genesis.clients[0]
        models = sorted({n.model_id for m in report.members for n in m.nodes if n.poc_slot})
        async with httpx.AsyncClient(timeout=30) as http:
            for i in range(REQUESTS):
                body = json.dumps({"model": models[i % len(models)], "max_tokens": 8,
                                   "messages": [{"role": "user", "content": f"during PoC {i}"}]}).encode()
                ts = time.time_ns()
                auth = sign(client.key, dev_signed_bytes(body, ts, own, ClientScheme.RAW))
                answer = await http.post(s.public_url + "/v1/chat/completions", content=body, headers={
                    "Authorization": auth, "X-Requester-Address": client.address, "X-Timestamp": str(ts),
                    "Content-Type": "application/json"})
                assert answer.status_code == 200, answer.text
        calls: dict[tuple[str, str], int] = {}
        for spec in devnet.genesis.participants:
            for node in spec.nodes:
                if spec.address == own:
                    calls[(own, node.local_id)] = _chat_calls(devnet.mlnodes, node.local_id, since)
                else:
                    name = devnet.executors.node_name(spec.name, node.local_id)
                    calls[(spec.address, node.local_id)] = _chat_calls(devnet.executors.mlnodes, name, since)
        devnet.resume_blocks()
    assert sum(calls.values()) >= REQUESTS
    assert {key for key, n in calls.items() if n} <= serving
    assert all(calls[key] == 0 for key in mining)
