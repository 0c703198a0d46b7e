"""An answered inference is paid even if the daemon dies right after answering (issue: answered ⇒ lands).

The daemon runs as a real ``dapi run`` process against the devnet. While the chain answers every broadcast
with a retriable "mempool is full", two requests (JSON and a stream) are served by the daemon as executor
and read in full by the client; then the process is killed with SIGKILL. Nothing reached the chain before
the kill. The chain recovers, the daemon starts again from the same data_dir, and both MsgFinishInference
land, naming the daemon as executor (a Finish without its Start is fine: the chain accepts either order).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
from test_durability import free_port, past_resend_deadlines, short_tx_timeout, start_daemon
from waiting import wait_for

from dapi.devnet import SimulatedNetwork
from dapi.devnet.daemon_config import DaemonPorts
from dapi.inference.signatures import ClientScheme, dev_signed_bytes, sign, ta_signed_bytes

READY = 58  # epoch 1 effective (53) and its models loaded on the own nodes


def _executor_headers(devnet: SimulatedNetwork, body: bytes, seed: int) -> dict[str, str]:
    """A request as the own daemon's TA side would forward it to itself."""
    client, own = devnet.genesis.clients[0], devnet.own
    timestamp = time.time_ns()
    auth = sign(client.key, dev_signed_bytes(body, timestamp, own.address, ClientScheme.RAW))
    return {"Authorization": auth, "X-Requester-Address": client.address, "X-Timestamp": str(timestamp),
            "X-Transfer-Address": own.address, "X-Inference-Id": auth, "X-Seed": str(seed),
            "X-TA-Signature": sign(own.signer_key, ta_signed_bytes(body, timestamp, own.address, own.address)),
            "Content-Type": "application/json"}


async def test_sigkill_right_after_answering_still_lands_the_finish(tmp_path: Path) -> None:
    async with SimulatedNetwork(block_time=0.05, participants=2, nodes_per_participant=2) as devnet:
        ports = DaemonPorts(free_port(), free_port(), free_port())
        config = tmp_path / "config.yaml"
        devnet.write_daemon_config(config, ports=ports, data_dir=tmp_path / "data")
        short_tx_timeout(config)
        model = devnet.own.nodes[0].models[0]
        http = httpx.AsyncClient(timeout=30)
        ids: list[str] = []

        async def daemon_height() -> int:
            status = (await http.get(ports.public_api + "/v1/status")).json()
            return status["chain"]["last_height"] or 0

        daemon = start_daemon(config)
        try:
            async def ready() -> bool:
                return await daemon_height() >= READY

            await wait_for(ready, what="epoch 1 effective for the daemon", timeout=60, ignore=(httpx.HTTPError,))
            devnet.pause_at(devnet.ledger.height + 1)
            await wait_for(lambda: devnet.paused, what="the chain to pause", timeout=30)
            devnet.inject_checktx_fault(10**6, code=20)  # "mempool is full": retried, never dropped
            for seed, stream in ((11, False), (12, True)):
                body = json.dumps({"model": model, "max_tokens": 8, "stream": stream,
                                   "messages": [{"role": "user", "content": f"durable {seed}"}]}).encode()
                headers = _executor_headers(devnet, body, seed)
                answer = await http.post(ports.public_api + "/v1/chat/completions", content=body, headers=headers)
                assert answer.status_code == 200, answer.text
                if stream:
                    assert answer.text.rstrip().endswith("data: [DONE]")
                else:
                    assert answer.json()["id"] == headers["X-Inference-Id"]
                ids.append(headers["X-Inference-Id"])
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(timeout=10)
            assert [i for i in ids if i in devnet.ledger.state.inferences] == []  # nothing landed before the kill
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()

        devnet.clear_checktx_faults()
        await past_resend_deadlines(tmp_path / "data" / "outbox.sqlite")
        devnet.resume_blocks()
        daemon = start_daemon(config)
        try:
            def finished() -> bool:
                records = [devnet.ledger.state.inferences.get(i) for i in ids]
                return all(r is not None and r.executed_by == devnet.own.address for r in records)

            await wait_for(finished, what="both Finishes on chain", timeout=60)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=15)
            await http.aclose()
        for inference_id in ids:
            record = devnet.ledger.state.inferences[inference_id]
            assert record.response_hash and record.completion_token_count > 0
