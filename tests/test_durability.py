"""Nothing answered 200 is lost: SIGKILL the daemon after 100 answered callbacks, before their broadcast.

The daemon runs as a real ``dapi run`` process against the devnet. While the chain answers every
broadcast with a retriable "mempool is full", 100 batches are posted and answered; then the process is
killed with SIGKILL, the chain recovers, the daemon is started again from the same data_dir, and all
100 batches land on chain, each once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml
from waiting import wait_for

from dapi.chain.epochs import EpochContext
from dapi.devnet import SimulatedNetwork
from dapi.devnet.daemon_config import DaemonPorts
from dapi.gen.inference.inference.tx_pb2 import MsgSubmitPocBatch

BATCHES = 100
TX_TIMEOUT = 5.0  # the outbox's tx validity, and its resend grace (min(5 s, validity))
MARK = 10**12  # nonces no simulated ML node produces, so our batches are recognisable on chain


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sent_deadlines(outbox: Path) -> list[float]:
    """The resend deadlines (wall clock) of the outbox's messages whose tx was sent and not yet seen on chain."""
    with contextlib.closing(sqlite3.connect(outbox)) as db:
        return [row[0] for row in db.execute("SELECT deadline FROM messages WHERE state = 'sent'")]


def short_tx_timeout(config: Path) -> None:
    """Give the outbox's txs a short validity, so a tx in flight at a kill is sent again soon after."""
    settings = yaml.safe_load(config.read_text())
    settings.setdefault("outbox", {})["tx_timeout"] = TX_TIMEOUT
    config.write_text(yaml.safe_dump(settings))


async def past_resend_deadlines(outbox: Path) -> None:
    """Until the deadline of every tx sent before a kill has passed: a restarted daemon then signs them all afresh."""
    deadlines = sent_deadlines(outbox)
    await wait_for(lambda: time.time() > max(deadlines, default=0.0), timeout=4 * TX_TIMEOUT + 30,
                   what="the resend deadline of every tx sent before the kill")


def start_daemon(config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DAPI_LOG_LEVEL": "WARNING"}
    env.pop("DAPI_SIGNER_KEY", None)
    return subprocess.Popen([sys.executable, "-m", "dapi", "run", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_sigkill_after_answered_callbacks_loses_nothing(tmp_path: Path) -> None:
    async with SimulatedNetwork(block_time=0.05, participants=2, nodes_per_participant=2) as devnet:
        ports = DaemonPorts(free_port(), free_port(), free_port())
        config = tmp_path / "config.yaml"
        devnet.write_daemon_config(config, ports=ports, data_dir=tmp_path / "data")
        # A tx whose broadcast was in flight when the process died is re-sent only once its own
        # timeout (plus grace) has passed, so that it can never land twice. The test restarts the
        # daemon after that point, so every batch is signed afresh at the restart and all of them sit
        # in the mempool together, unexpired, before the few blocks left of the exchange window.
        short_tx_timeout(config)
        params = devnet.genesis.epoch_params
        ctx = EpochContext(1, params.epoch_length, params)
        own = devnet.own.address
        http = httpx.AsyncClient(timeout=10)

        async def daemon_height() -> int:
            status = (await http.get(ports.public_api + "/v1/status")).json()
            return status["chain"]["last_height"] or 0

        def ours() -> list[str]:
            return [b.batch_id for b in devnet.ledger.batches(ctx.start_of_poc, participant=own)
                    if b.nonces and b.nonces[0] >= MARK]

        daemon = start_daemon(config)
        try:
            async def in_window() -> bool:
                return await daemon_height() >= ctx.start_of_poc + 1

            await wait_for(in_window, what="the PoC exchange window", timeout=30, ignore=(httpx.HTTPError,))
            devnet.pause_at(devnet.ledger.height + 1)
            await wait_for(lambda: devnet.paused, what="the chain to pause", timeout=30, ignore=(httpx.HTTPError,))
            assert devnet.ledger.height < ctx.poc_exchange_window.end - 3
            devnet.inject_checktx_fault(10**6, code=20)
            # Posted as node1 posts its own: on the URL, with the key and the stage its InitDto gave it.
            def inits() -> list[dict]:
                return [c.json for c in devnet.mlnodes.calls("node1") if c.path == "/api/v1/pow/init/generate"]

            await wait_for(inits, what="node1 started mining", timeout=30)
            init = inits()[-1]
            assert init["url"].startswith(ports.ml_api + "/n/") and init["block_height"] == ctx.start_of_poc
            for i in range(BATCHES):
                body = {"public_key": init["public_key"], "block_hash": init["block_hash"],
                        "block_height": ctx.start_of_poc, "nonces": [MARK + i], "dist": [0.5], "node_id": 1}
                response = await http.post(init["url"] + "/generated", json=body)
                assert response.status_code == 200, response.text
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(timeout=10)
            assert ours() == []  # nothing reached the chain before the kill
            # The simulated ML nodes stop mining, so that the mempool holds our batches only.
            for node in devnet.own.nodes:
                await http.post(devnet.mlnodes.node_url(node.local_id) + "/api/v1/stop")
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()

        devnet.clear_checktx_faults()
        # A batch whose broadcast was in flight at the kill is on record as sent, with the deadline (its tx's
        # timeout plus grace) after which the outbox sends it again. Once every such deadline has passed, the
        # restarted daemon signs every batch afresh at once.
        await past_resend_deadlines(tmp_path / "data" / "outbox.sqlite")
        daemon = start_daemon(config)
        try:
            # Resume only once the mempool holds every one of them, so that the few blocks left of the
            # exchange window include them all. A batch whose broadcast was in flight at the kill is
            # sent again once its (short) tx timeout has passed.
            def in_mempool() -> int:
                return len({m.nonces[0] for m in devnet.ledger.mempool_messages()
                            if isinstance(m, MsgSubmitPocBatch) and m.nonces and m.nonces[0] >= MARK})

            try:
                await wait_for(lambda: in_mempool() == BATCHES, what="every batch in the mempool", timeout=60, ignore=(httpx.HTTPError,))
            except AssertionError:
                counts = (await http.get(ports.admin_api + "/admin/v1/outbox")).json()
                raise AssertionError(f"{in_mempool()} of {BATCHES} in the mempool; outbox {counts['counts']}, "
                                     f"pending {counts['pending'][:3]}") from None
            devnet.resume_blocks()
            try:
                await wait_for(lambda: len(ours()) == BATCHES, what=f"{BATCHES} batches on chain", timeout=60, ignore=(httpx.HTTPError,))
            except AssertionError:
                dead = (await http.get(ports.admin_api + "/admin/v1/outbox/dead-letters")).json()["dead_letters"]
                raise AssertionError(f"{len(ours())} of {BATCHES} on chain; dead letters: {dead[:3]}") from None
        finally:
            daemon.terminate()
            assert daemon.wait(timeout=15) == 0  # a graceful stop on SIGTERM
            await http.aclose()
    batches = [b for b in devnet.ledger.batches(ctx.start_of_poc, participant=own) if b.nonces[0] >= MARK]
    assert sorted(b.nonces[0] - MARK for b in batches) == list(range(BATCHES))  # every one, each once
    assert {b.node_id for b in batches} == {"node1"}
